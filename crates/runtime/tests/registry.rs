//! Image pulls of the built-in runtime from a real registry: Debian's
//! `docker-registry` on 127.0.0.1 over plain HTTP (see
//! `skiff_testing::Registry`), filled with the project's test image by the
//! fixture's own OCI distribution push. Pulls by tag and by digest, tags
//! that move, image indexes, missing images, basic auth, and mirrors and
//! credentials from a k3s-style `registries.yaml`. No agent runs here, so
//! the registry stays in the host's network namespace, on loopback only.
//! Needs root (the pulled image runs a container); as another user every
//! test says so and passes without running.

mod common;

use std::time::Duration;

use common::{fixture_with, is_root, wait_for_log_line};
use skiff_runtime::cri_types as cri;
use skiff_runtime::{Error, ImageService, PullConfig, Registries};
use skiff_testing::registry::{MEDIA_OCI_INDEX, MEDIA_OCI_MANIFEST};
use skiff_testing::{Registry, RegistryOptions};

const REPO: &str = "skiff/testbin";
const USER: &str = "alice";
const PASSWORD: &str = "s3cret";

fn spec(image: &str) -> cri::ImageSpec {
    cri::ImageSpec {
        image: image.into(),
        ..Default::default()
    }
}

fn open_registry() -> Registry {
    Registry::start(RegistryOptions::default()).expect("start docker-registry")
}

fn auth_registry() -> Registry {
    Registry::start(RegistryOptions {
        basic_auth: Some((USER.into(), PASSWORD.into())),
        ..Default::default()
    })
    .expect("start docker-registry with htpasswd")
}

fn credentials(user: &str, password: &str) -> cri::AuthConfig {
    cri::AuthConfig {
        username: user.into(),
        password: password.into(),
        ..Default::default()
    }
}

/// The message of an `Error::Image` for `image`; panics on anything else.
fn image_error(result: Result<String, Error>, image: &str) -> String {
    match result {
        Err(Error::Image {
            image: named,
            message,
        }) => {
            assert_eq!(named, image, "error names the image");
            message
        }
        other => panic!("want an image error for {image}, got {other:?}"),
    }
}

/// Pushes a variant of the test image under `tag`: its manifest with a
/// config that carries one more label (same layer). Returns the manifest's
/// digest.
fn push_variant(reg: &Registry, tag: &str, label: &str) -> String {
    let accept = [("Accept", MEDIA_OCI_MANIFEST.to_string())];
    let base = reg
        .request(
            "GET",
            &format!("/v2/{REPO}/manifests/1"),
            &accept,
            b"",
            true,
        )
        .expect("get manifest");
    assert_eq!(base.status, 200, "{}", String::from_utf8_lossy(&base.body));
    let mut manifest: serde_json::Value = serde_json::from_slice(&base.body).unwrap();
    let config_digest = manifest["config"]["digest"].as_str().unwrap().to_string();
    let config = reg
        .request(
            "GET",
            &format!("/v2/{REPO}/blobs/{config_digest}"),
            &[],
            b"",
            true,
        )
        .expect("get config");
    assert_eq!(config.status, 200);
    let mut config: serde_json::Value = serde_json::from_slice(&config.body).unwrap();
    config["config"]["Labels"] = serde_json::json!({ "variant": label });
    let config = serde_json::to_vec(&config).unwrap();
    let digest = reg.push_blob(REPO, &config).expect("push config");
    manifest["config"]["digest"] = digest.into();
    manifest["config"]["size"] = config.len().into();
    reg.push_manifest(
        REPO,
        tag,
        MEDIA_OCI_MANIFEST,
        &serde_json::to_vec(&manifest).unwrap(),
    )
    .expect("push manifest")
}

fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_image_pulled_by_tag_over_plain_http_is_listed_and_runs() {
    if !is_root() {
        return;
    }
    let reg = open_registry();
    let digest = reg.push_test_image(REPO, "1").expect("push test image");
    let f = fixture_with(PullConfig {
        insecure_registries: vec![reg.host()],
        ..Default::default()
    })
    .await;
    let image = format!("{}/{REPO}:1", reg.host());
    assert!(f.rt.image_status(spec(&image)).await.unwrap().is_none());

    let id = f.rt.pull_image(spec(&image), None).await.expect("pull");
    let status =
        f.rt.image_status(spec(&image))
            .await
            .unwrap()
            .expect("present after the pull");
    assert_eq!(status.id, id);
    assert_eq!(status.repo_tags, [image.as_str()]);
    assert_eq!(
        status.repo_digests,
        [format!("{}/{REPO}@{digest}", reg.host())]
    );
    assert!(status.size > 0);
    let listed = f.rt.list_images(None).await.unwrap();
    assert_eq!(
        listed.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(),
        [id.as_str()]
    );

    let sb = f.sandbox("pulled").await;
    let c = f
        .container(&sb, "hello", &["print", "hello from the registry"], |c| {
            c.image = Some(spec(&image));
        })
        .await;
    let exited = f.wait_exited(&c, Duration::from_secs(20)).await;
    assert_eq!(exited.exit_code, 0, "{exited:?}");
    assert_eq!(exited.image_ref, id);
    wait_for_log_line(&exited.log_path, "hello from the registry").await;
    f.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_image_pulled_by_digest_needs_no_registry_once_present_but_a_tag_always_asks() {
    if !is_root() {
        return;
    }
    let reg = open_registry();
    let digest = reg.push_test_image(REPO, "1").expect("push test image");
    // No insecure list: a loopback registry is plain HTTP by itself.
    let f = fixture_with(PullConfig::default()).await;
    let by_digest = format!("{}/{REPO}@{digest}", reg.host());
    let by_tag = format!("{}/{REPO}:1", reg.host());

    let id = f.rt.pull_image(spec(&by_digest), None).await.expect("pull");
    let status =
        f.rt.image_status(spec(&by_digest))
            .await
            .unwrap()
            .expect("present by digest");
    assert_eq!(status.id, id);
    assert!(status.repo_tags.is_empty(), "{:?}", status.repo_tags);
    assert_eq!(status.repo_digests, [by_digest.as_str()]);

    drop(reg);
    assert_eq!(
        f.rt.pull_image(spec(&by_digest), None)
            .await
            .expect("present"),
        id
    );
    let message = image_error(f.rt.pull_image(spec(&by_tag), None).await, &by_tag);
    assert!(message.contains("fetching manifest"), "{message}");
    f.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_tag_or_repository_is_an_image_error_that_says_not_found() {
    if !is_root() {
        return;
    }
    let reg = open_registry();
    reg.push_test_image(REPO, "1").expect("push test image");
    let f = fixture_with(PullConfig::default()).await;
    // distribution answers MANIFEST_UNKNOWN for an unknown repository too.
    for image in [
        format!("{}/{REPO}:nope", reg.host()),
        format!("{}/skiff/absent:1", reg.host()),
    ] {
        let message = image_error(f.rt.pull_image(spec(&image), None).await, &image);
        assert!(
            message.contains("not found: manifest unknown"),
            "{image}: {message}"
        );
        assert!(f.rt.image_status(spec(&image)).await.unwrap().is_none());
    }
    assert!(f.rt.list_images(None).await.unwrap().is_empty());
    f.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_registry_with_basic_auth_refuses_anonymous_and_wrong_credentials_and_serves_right_ones()
{
    if !is_root() {
        return;
    }
    let reg = auth_registry();
    reg.push_test_image(REPO, "1").expect("push test image");
    let f = fixture_with(PullConfig::default()).await;
    let image = format!("{}/{REPO}:1", reg.host());

    let message = image_error(f.rt.pull_image(spec(&image), None).await, &image);
    assert!(message.contains("requires credentials"), "{message}");
    let wrong = credentials(USER, "wrong");
    let message = image_error(f.rt.pull_image(spec(&image), Some(wrong)).await, &image);
    assert!(message.contains("refused the credentials"), "{message}");
    assert!(f.rt.image_status(spec(&image)).await.unwrap().is_none());

    let id =
        f.rt.pull_image(spec(&image), Some(credentials(USER, PASSWORD)))
            .await
            .expect("pull with credentials");
    // The `auth` form of a Docker config (base64 of user:password).
    let encoded = cri::AuthConfig {
        auth: "YWxpY2U6czNjcmV0".into(),
        ..Default::default()
    };
    assert_eq!(
        f.rt.pull_image(spec(&image), Some(encoded))
            .await
            .expect("pull with auth"),
        id
    );
    f.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pulling_a_tag_again_follows_it_to_the_image_it_names_now() {
    if !is_root() {
        return;
    }
    let reg = open_registry();
    reg.push_test_image(REPO, "1").expect("push test image");
    let first_digest = reg.push_test_image(REPO, "moving").expect("push");
    let f = fixture_with(PullConfig::default()).await;
    let image = format!("{}/{REPO}:moving", reg.host());
    let first = f.rt.pull_image(spec(&image), None).await.expect("pull");

    let second_digest = push_variant(&reg, "moving", "second");
    assert_ne!(second_digest, first_digest);
    let second =
        f.rt.pull_image(spec(&image), None)
            .await
            .expect("pull again");
    assert_ne!(second, first, "the moved tag names another image");

    let now = f.rt.image_status(spec(&image)).await.unwrap().expect("tag");
    assert_eq!(now.id, second);
    assert_eq!(now.repo_tags, [image.as_str()]);
    assert_eq!(
        now.repo_digests,
        [format!("{}/{REPO}@{second_digest}", reg.host())]
    );
    let old = f.rt.image_status(spec(&first)).await.unwrap().expect("id");
    assert!(
        old.repo_tags.is_empty(),
        "tag left behind: {:?}",
        old.repo_tags
    );
    assert_eq!(f.rt.list_images(None).await.unwrap().len(), 2);
    f.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_image_index_resolves_to_the_manifest_for_this_machine() {
    if !is_root() {
        return;
    }
    let reg = open_registry();
    let native = reg.push_test_image(REPO, "1").expect("push test image");
    let foreign = push_variant(&reg, "foreign-only", "foreign");
    let size = |tag: &str| {
        let r = reg
            .request(
                "GET",
                &format!("/v2/{REPO}/manifests/{tag}"),
                &[("Accept", MEDIA_OCI_MANIFEST.to_string())],
                b"",
                true,
            )
            .expect("get manifest");
        r.body.len()
    };
    let foreign_arch = if host_arch() == "s390x" {
        "riscv64"
    } else {
        "s390x"
    };
    let entry = |digest: &str, arch: &str| {
        serde_json::json!({
            "mediaType": MEDIA_OCI_MANIFEST,
            "digest": digest,
            "size": size(digest),
            "platform": { "os": "linux", "architecture": arch },
        })
    };
    let index = |entries: Vec<serde_json::Value>| {
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_OCI_INDEX,
            "manifests": entries,
        }))
        .unwrap()
    };
    let multi = index(vec![
        entry(&foreign, foreign_arch),
        entry(&native, host_arch()),
    ]);
    let multi_digest = reg
        .push_manifest(REPO, "multi", MEDIA_OCI_INDEX, &multi)
        .expect("push index");
    reg.push_manifest(
        REPO,
        "elsewhere",
        MEDIA_OCI_INDEX,
        &index(vec![entry(&foreign, foreign_arch)]),
    )
    .expect("push foreign index");

    let f = fixture_with(PullConfig::default()).await;
    let native_id =
        f.rt.pull_image(spec(&format!("{}/{REPO}:1", reg.host())), None)
            .await
            .expect("pull native");
    let image = format!("{}/{REPO}:multi", reg.host());
    assert_eq!(
        f.rt.pull_image(spec(&image), None)
            .await
            .expect("pull index"),
        native_id
    );
    let status = f.rt.image_status(spec(&image)).await.unwrap().expect("tag");
    assert!(
        status
            .repo_digests
            .contains(&format!("{}/{REPO}@{multi_digest}", reg.host())),
        "{:?}",
        status.repo_digests
    );

    let elsewhere = format!("{}/{REPO}:elsewhere", reg.host());
    let message = image_error(f.rt.pull_image(spec(&elsewhere), None).await, &elsewhere);
    assert!(
        message.contains(&format!("no manifest for linux/{}", host_arch()))
            && message.contains(&format!("linux/{foreign_arch}")),
        "{message}"
    );
    f.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mirrors_and_credentials_come_from_registries_yaml() {
    if !is_root() {
        return;
    }
    let reg = auth_registry();
    reg.push_test_image(REPO, "1").expect("push test image");
    let yaml = format!(
        "mirrors:\n  mirror.invalid:\n    endpoint: [\"http://{host}\"]\nconfigs:\n  \"{host}\":\n    auth: {{username: {USER}, password: {PASSWORD}}}\n",
        host = reg.host()
    );
    let registries = Registries::from_yaml(&yaml).expect("registries.yaml");
    let f = fixture_with(PullConfig {
        registries,
        ..Default::default()
    })
    .await;

    // Through the mirror, with the mirror's configured credentials; the
    // image keeps the name it was asked by.
    let mirrored = "mirror.invalid/skiff/testbin:1";
    let id =
        f.rt.pull_image(spec(mirrored), None)
            .await
            .expect("pull through the mirror");
    let status =
        f.rt.image_status(spec(mirrored))
            .await
            .unwrap()
            .expect("tag");
    assert_eq!(status.id, id);
    assert_eq!(status.repo_tags, [mirrored]);

    // The registry itself, with no credentials from the caller: the
    // configured ones apply.
    let direct = format!("{}/{REPO}:1", reg.host());
    assert_eq!(
        f.rt.pull_image(spec(&direct), None)
            .await
            .expect("pull direct"),
        id
    );
    f.cleanup().await;
}
