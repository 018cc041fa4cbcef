//! The built-in runtime against the real kernel: sandboxes, containers of
//! the test image (`skiff-testbin`), logs, exits, OOM kills, exec, and a
//! shared network namespace. Needs root (namespaces, mounts, cgroups); as
//! another user every test says so and passes without running.
//! Nothing here touches a real network: each sandbox has its own network
//! namespace with only `lo`.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{fixture, is_root, log_lines, open, wait_for_log_line};
use skiff_runtime::cri_types as cri;
use skiff_runtime::{ImageService, RuntimeService};
use skiff_testing::{ArchiveFormat, TEST_IMAGE, test_image_archive_as};

#[tokio::test(flavor = "multi_thread")]
async fn container_that_prints_and_exits_leaves_cri_log_lines_and_its_exit_code() {
    if !is_root() {
        return;
    }
    let f = fixture().await;
    let sb = f.sandbox("printer").await;
    let ok = f
        .container(&sb, "hello", &["print", "hello from skiff"], |_| {})
        .await;
    let status = f.wait_exited(&ok, Duration::from_secs(20)).await;
    assert_eq!(status.exit_code, 0);
    assert_eq!(status.reason, "Completed");
    assert!(status.finished_at >= status.started_at && status.started_at > 0);
    let lines = log_lines(&status.log_path);
    assert_eq!(lines.len(), 1, "{lines:?}");
    let parts: Vec<&str> = lines[0].splitn(4, ' ').collect();
    assert_eq!(parts[1..], ["stdout", "F", "hello from skiff"]);
    assert!(
        parts[0].ends_with('Z') && parts[0].len() == 30,
        "timestamp {}",
        parts[0]
    );

    let failing = f.container(&sb, "fail", &["exit", "3"], |_| {}).await;
    let status = f.wait_exited(&failing, Duration::from_secs(20)).await;
    assert_eq!((status.exit_code, status.reason.as_str()), (3, "Error"));
    f.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn long_running_container_stops_on_sigterm_before_the_timeout() {
    if !is_root() {
        return;
    }
    let f = fixture().await;
    let sb = f.sandbox("pauser").await;
    let id = f.container(&sb, "pause", &["pause"], |_| {}).await;
    let status = f.rt.container_status(&id).await.unwrap();
    assert_eq!(status.state, cri::ContainerState::ContainerRunning as i32);
    // Before its handler is installed, PID 1 of a PID namespace ignores SIGTERM.
    wait_for_log_line(&status.log_path, "paused").await;
    let started = Instant::now();
    f.rt.stop_container(&id, Duration::from_secs(30))
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "SIGTERM was not honoured"
    );
    let status = f.rt.container_status(&id).await.unwrap();
    assert_eq!(status.state, cri::ContainerState::ContainerExited as i32);
    // testbin exits 0 on SIGTERM.
    assert_eq!(status.exit_code, 0);
    f.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn container_over_its_memory_limit_is_reported_oom_killed() {
    if !is_root() {
        return;
    }
    let f = fixture().await;
    let sb = f.sandbox("hog").await;
    let id = f
        .container(&sb, "hog", &["alloc-memory", "200"], |c| {
            c.linux = Some(cri::LinuxContainerConfig {
                resources: Some(cri::LinuxContainerResources {
                    memory_limit_in_bytes: 32 << 20,
                    ..Default::default()
                }),
                ..Default::default()
            });
        })
        .await;
    let status = f.wait_exited(&id, Duration::from_secs(30)).await;
    assert_eq!(status.reason, "OOMKilled", "{status:?}");
    assert_eq!(status.exit_code, 137);
    f.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_sync_returns_output_and_exit_code_of_the_command() {
    if !is_root() {
        return;
    }
    let f = fixture().await;
    let sb = f.sandbox("execd").await;
    let id = f
        .container(&sb, "main", &["pause"], |c| {
            c.envs = vec![cri::KeyValue {
                key: "GREETING".into(),
                value: "hi".into(),
            }];
        })
        .await;
    let out =
        f.rt.exec_sync(
            &id,
            vec!["/testbin".into(), "env".into(), "GREETING".into()],
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!(
        (out.exit_code, String::from_utf8_lossy(&out.stdout).as_ref()),
        (0, "hi\n")
    );
    let out =
        f.rt.exec_sync(
            &id,
            vec!["/testbin".into(), "hostname".into()],
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "execd\n");
    let out =
        f.rt.exec_sync(
            &id,
            vec!["/testbin".into(), "exit".into(), "7".into()],
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!(out.exit_code, 7);
    let out =
        f.rt.exec_sync(
            &id,
            vec!["/testbin".into(), "cat".into(), "/nonexistent".into()],
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!(out.exit_code, 2);
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent"));
    let slow =
        f.rt.exec_sync(
            &id,
            vec!["/testbin".into(), "sleep".into(), "30".into()],
            Duration::from_millis(500),
        )
        .await;
    assert!(slow.is_err(), "a command over its timeout must fail");
    f.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn containers_of_one_sandbox_share_its_network_namespace() {
    if !is_root() {
        return;
    }
    let f = fixture().await;
    let sb = f.sandbox("web").await;
    let server = f
        .container(
            &sb,
            "server",
            &["netexec", "--http-port", "8080", "--tcp-port", "8081"],
            |_| {},
        )
        .await;
    let client = f.container(&sb, "client", &["pause"], |_| {}).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let out =
            f.rt.exec_sync(
                &client,
                vec!["/testbin".into(), "connect".into(), "127.0.0.1:8080".into()],
                Duration::from_secs(10),
            )
            .await
            .unwrap();
        if out.exit_code == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "netexec in the same sandbox never became reachable"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A second sandbox has its own network namespace: nothing listens there.
    let other = f.sandbox("elsewhere").await;
    let stranger = f.container(&other, "stranger", &["pause"], |_| {}).await;
    let out =
        f.rt.exec_sync(
            &stranger,
            vec!["/testbin".into(), "connect".into(), "127.0.0.1:8080".into()],
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!(out.exit_code, 1);
    assert_eq!(
        f.rt.container_status(&server).await.unwrap().state,
        cri::ContainerState::ContainerRunning as i32
    );
    f.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reopened_runtime_still_knows_its_sandboxes_and_containers() {
    if !is_root() {
        return;
    }
    let f = fixture().await;
    let sb = f.sandbox("survivor").await;
    let id = f.container(&sb, "main", &["pause"], |_| {}).await;
    let again = open(f.dir.path(), &f.cgroup_root);
    let status = again.container_status(&id).await.unwrap();
    assert_eq!(status.state, cri::ContainerState::ContainerRunning as i32);
    assert_eq!(again.list_pod_sandbox(None).await.unwrap().len(), 1);
    again
        .stop_container(&id, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(
        f.rt.container_status(&id).await.unwrap().state,
        cri::ContainerState::ContainerExited as i32
    );
    again.remove_pod_sandbox(&sb.0).await.unwrap();
    f.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn list_filters_select_by_sandbox_state_and_labels() {
    if !is_root() {
        return;
    }
    let f = fixture().await;
    let a = f.sandbox("alpha").await;
    let b = f.sandbox("beta").await;
    let running = f
        .container(&a, "run", &["pause"], |c| {
            c.labels = HashMap::from([("tier".into(), "web".into())])
        })
        .await;
    let done = f.container(&b, "done", &["exit", "0"], |_| {}).await;
    f.wait_exited(&done, Duration::from_secs(20)).await;
    let by_state =
        f.rt.list_containers(Some(cri::ContainerFilter {
            state: Some(cri::ContainerStateValue {
                state: cri::ContainerState::ContainerRunning as i32,
            }),
            ..Default::default()
        }))
        .await
        .unwrap();
    assert_eq!(
        by_state.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
        [running.as_str()]
    );
    let by_sandbox =
        f.rt.list_containers(Some(cri::ContainerFilter {
            pod_sandbox_id: b.0.clone(),
            ..Default::default()
        }))
        .await
        .unwrap();
    assert_eq!(
        by_sandbox.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
        [done.as_str()]
    );
    let by_label =
        f.rt.list_containers(Some(cri::ContainerFilter {
            label_selector: HashMap::from([("tier".into(), "web".into())]),
            ..Default::default()
        }))
        .await
        .unwrap();
    assert_eq!(by_label.len(), 1);
    let sandboxes =
        f.rt.list_pod_sandbox(Some(cri::PodSandboxFilter {
            label_selector: HashMap::from([("app".into(), "beta".into())]),
            ..Default::default()
        }))
        .await
        .unwrap();
    assert_eq!(
        sandboxes.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
        [b.0.as_str()]
    );
    f.rt.stop_pod_sandbox(&a.0).await.unwrap();
    let status = f.rt.pod_sandbox_status(&a.0).await.unwrap();
    assert_eq!(status.state, cri::PodSandboxState::SandboxNotready as i32);
    f.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn images_import_from_both_archive_formats_and_resolve_by_name_and_id() {
    if !is_root() {
        return;
    }
    let f = fixture().await;
    let oci = test_image_archive_as(ArchiveFormat::OciLayout).unwrap();
    let imported = f.rt.import_image_archive(&oci).await.unwrap();
    assert_eq!(imported.len(), 1);
    assert_eq!(imported[0].repo_tags, [TEST_IMAGE]);
    let spec = |image: &str| cri::ImageSpec {
        image: image.into(),
        ..Default::default()
    };
    let status =
        f.rt.image_status(spec(TEST_IMAGE))
            .await
            .unwrap()
            .expect("present");
    assert_eq!(status.id, imported[0].id);
    let by_id =
        f.rt.image_status(spec(&status.id))
            .await
            .unwrap()
            .expect("by id");
    assert_eq!(by_id.repo_tags, [TEST_IMAGE]);
    // By digest, a present image needs no registry (by tag it would ask the
    // registry, which crates/runtime/tests/registry.rs covers).
    let by_digest = format!("skiff.test/testbin@{}", imported[0].manifest_digest);
    assert_eq!(
        f.rt.pull_image(spec(&by_digest), None).await.unwrap(),
        status.id
    );
    assert!(f.rt.image_status(spec("busybox")).await.unwrap().is_none());
    assert_eq!(f.rt.list_images(None).await.unwrap().len(), 1);
    f.rt.remove_image(spec(TEST_IMAGE)).await.unwrap();
    assert!(f.rt.image_status(spec(TEST_IMAGE)).await.unwrap().is_none());
    assert!(f.rt.list_images(None).await.unwrap().is_empty());
    f.cleanup().await;
}

/// Reads `reader` into `seen` until it contains `needle`; `false` if that
/// did not happen within `limit`.
async fn read_within(
    reader: &mut (impl tokio::io::AsyncRead + Unpin),
    seen: &mut String,
    needle: &str,
    limit: Duration,
) -> bool {
    use tokio::io::AsyncReadExt;
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 4096];
    while !seen.contains(needle) {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, reader.read(&mut buf)).await {
            Ok(Ok(0)) => panic!("stream ended before {needle:?}; got {seen:?}"),
            Ok(Ok(n)) => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
            Ok(Err(e)) => panic!("reading before {needle:?}: {e}; got {seen:?}"),
            Err(_) => return false,
        }
    }
    true
}

/// Reads `reader` into `seen` until it contains `needle` (fails after 20 s).
async fn read_until(
    reader: &mut (impl tokio::io::AsyncRead + Unpin),
    seen: &mut String,
    needle: &str,
) {
    if !read_within(reader, seen, needle, Duration::from_secs(20)).await {
        panic!("no {needle:?} within 20 s; got {seen:?}");
    }
}

/// Asks a `tty-info --loop` for its size until it reports `want` (a resize
/// and the input travel separately).
async fn wait_for_size(
    stdin: &mut (impl tokio::io::AsyncWrite + Unpin),
    stdout: &mut (impl tokio::io::AsyncRead + Unpin),
    seen: &mut String,
    want: &str,
) {
    use tokio::io::AsyncWriteExt;
    let needle = format!("size={want}");
    for _ in 0..40 {
        stdin.write_all(b"size\n").await.unwrap();
        if read_within(stdout, seen, &needle, Duration::from_millis(500)).await {
            return;
        }
    }
    panic!("the terminal never was {want}; got {seen:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_with_a_tty_runs_on_a_controlling_terminal_that_follows_resizes() {
    use tokio::io::AsyncWriteExt;
    if !is_root() {
        return;
    }
    let f = fixture().await;
    let sb = f.sandbox("ttyexec").await;
    let id = f.container(&sb, "main", &["pause"], |_| {}).await;
    let mut session =
        f.rt.exec(skiff_runtime::ExecRequest {
            container_id: id.clone(),
            cmd: vec!["/testbin".into(), "tty-info".into(), "--loop".into()],
            tty: true,
            stdin: true,
        })
        .await
        .expect("exec with a tty");
    assert!(
        session.stderr.is_none(),
        "a terminal has no separate stderr"
    );
    let resize = session.resize.clone().expect("a terminal resizes");
    let mut stdin = session.stdin.take().expect("stdin");
    let mut seen = String::new();
    read_until(
        &mut session.stdout,
        &mut seen,
        "stdin-tty=true stdout-tty=true ctty=true",
    )
    .await;
    resize.send((123, 45)).await.unwrap();
    wait_for_size(&mut stdin, &mut session.stdout, &mut seen, "123x45").await;
    // The terminal echoes input and turns \n into \r\n.
    stdin.write_all(b"hello\n").await.unwrap();
    read_until(&mut session.stdout, &mut seen, "got hello\r\n").await;
    // Without a TTY an exec has neither a terminal nor a controlling one.
    let out =
        f.rt.exec_sync(
            &id,
            vec!["/testbin".into(), "tty-info".into()],
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "stdin-tty=false stdout-tty=false ctty=false size=none\n"
    );
    stdin.write_all(b"exit\n").await.unwrap();
    let code = tokio::time::timeout(Duration::from_secs(20), session.exit_code)
        .await
        .expect("exit in time")
        .expect("exit code");
    assert_eq!(code, 0);
    f.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn attach_streams_output_and_feeds_a_stdin_that_stays_open_across_attaches_and_restarts() {
    use tokio::io::AsyncWriteExt;
    if !is_root() {
        return;
    }
    let f = fixture().await;
    let sb = f.sandbox("attached").await;
    let id = f
        .container(&sb, "main", &["cat"], |c| {
            c.stdin = true;
        })
        .await;
    let request = skiff_runtime::AttachRequest {
        container_id: id.clone(),
        stdin: true,
        stdout: true,
        stderr: true,
    };
    // The second attach goes through a reopened runtime (an agent restart):
    // the container's monitor still serves it.
    let reopened = open(f.dir.path(), &f.cgroup_root);
    for (word, rt) in [("first", &f.rt), ("second", &reopened)] {
        let mut session = rt.attach(request.clone()).await.expect("attach");
        assert!(session.resize.is_none() && session.stderr.is_some());
        let mut stdin = session.stdin.take().expect("the container keeps stdin");
        stdin
            .write_all(format!("{word}\n").as_bytes())
            .await
            .unwrap();
        let mut seen = String::new();
        read_until(&mut session.stdout, &mut seen, &format!("{word}\n")).await;
        // Ending this attach's input does not close the container's stdin.
        stdin.shutdown().await.unwrap();
        drop(stdin);
        drop(session);
    }
    let log = sb.1.log_directory.clone() + "/main/0.log";
    wait_for_log_line(&log, "second").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        f.rt.container_status(&id).await.unwrap().state,
        cri::ContainerState::ContainerRunning as i32
    );
    // Without stdin in the request the attach only watches.
    let session =
        f.rt.attach(skiff_runtime::AttachRequest {
            stdin: false,
            ..request
        })
        .await
        .unwrap();
    assert!(session.stdin.is_none());
    f.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn stdin_once_closes_the_containers_stdin_when_the_first_attach_ends() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if !is_root() {
        return;
    }
    let f = fixture().await;
    let sb = f.sandbox("once").await;
    let id = f
        .container(&sb, "main", &["cat"], |c| {
            c.stdin = true;
            c.stdin_once = true;
        })
        .await;
    let mut session =
        f.rt.attach(skiff_runtime::AttachRequest {
            container_id: id.clone(),
            stdin: true,
            stdout: true,
            stderr: true,
        })
        .await
        .expect("attach");
    let mut stdin = session.stdin.take().expect("stdin");
    stdin.write_all(b"only once\n").await.unwrap();
    let mut seen = String::new();
    read_until(&mut session.stdout, &mut seen, "only once\n").await;
    stdin.shutdown().await.unwrap();
    // cat sees end of file and exits; the attach's output ends with it.
    let mut rest = Vec::new();
    tokio::time::timeout(
        Duration::from_secs(20),
        session.stdout.read_to_end(&mut rest),
    )
    .await
    .expect("the attach ends when the container exits")
    .unwrap();
    let status = f.wait_exited(&id, Duration::from_secs(20)).await;
    assert_eq!(status.exit_code, 0, "{status:?}");
    assert!(
        f.rt.attach(skiff_runtime::AttachRequest {
            container_id: id,
            stdin: false,
            stdout: true,
            stderr: true,
        })
        .await
        .is_err()
    );
    f.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tty_container_is_attached_through_its_terminal_and_logs_its_output() {
    use tokio::io::AsyncWriteExt;
    if !is_root() {
        return;
    }
    let f = fixture().await;
    let sb = f.sandbox("ttyc").await;
    let id = f
        .container(&sb, "main", &["tty-info", "--loop"], |c| {
            c.stdin = true;
            c.tty = true;
        })
        .await;
    let log = sb.1.log_directory.clone() + "/main/0.log";
    let deadline = Instant::now() + Duration::from_secs(20);
    while !log_lines(&log)
        .iter()
        .any(|l| l.contains(" stdout F stdin-tty=true stdout-tty=true ctty=true"))
    {
        assert!(Instant::now() < deadline, "{:?}", log_lines(&log));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut session =
        f.rt.attach(skiff_runtime::AttachRequest {
            container_id: id.clone(),
            stdin: true,
            stdout: true,
            stderr: true,
        })
        .await
        .expect("attach");
    assert!(
        session.stderr.is_none(),
        "a terminal has no separate stderr"
    );
    let resize = session.resize.clone().expect("a terminal resizes");
    let mut stdin = session.stdin.take().expect("stdin");
    resize.send((90, 20)).await.unwrap();
    let mut seen = String::new();
    wait_for_size(&mut stdin, &mut session.stdout, &mut seen, "90x20").await;
    stdin.write_all(b"exit\n").await.unwrap();
    let status = f.wait_exited(&id, Duration::from_secs(20)).await;
    assert_eq!(status.exit_code, 0, "{status:?}");
    f.cleanup().await;
}
