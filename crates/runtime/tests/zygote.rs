//! Container monitors and exec helpers forked by the monitor zygote instead
//! of by the runtime's own (multi-threaded) process, and the fallback when
//! the zygote is gone. Needs root, like the other built-in runtime tests.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{fixture_with_zygote, is_root, log_lines};
use skiff_runtime::{ExecRequest, RuntimeService, Zygote};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The processes whose parent is `parent`.
fn children_of(parent: i32) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()))
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("PPid:"))
                    .is_some_and(|v| v.trim() == parent.to_string())
            })
        })
        .collect()
}

/// The parent pid of `pid`, from /proc.
fn parent_of(pid: i32) -> i32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("PPid line")
}

#[test]
fn monitors_and_exec_helpers_are_forked_by_the_zygote_and_by_the_runtime_once_it_is_gone() {
    if !is_root() {
        return;
    }
    // Forked before the test starts its async runtime, as `skiff` does in
    // `main`.
    let zygote = Arc::new(Zygote::fork().expect("fork the zygote"));
    let zygote_pid = zygote.pid();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async move {
        let f = fixture_with_zygote(zygote).await;
        let sb = f.sandbox("zygote").await;

        // A running container: its init's parent is the monitor, whose
        // parent is the zygote.
        let long = f.container(&sb, "long", &["pause"], |_| {}).await;
        let monitor = parent_of(f.container_pid(&long));
        assert_eq!(parent_of(monitor), zygote_pid, "monitor {monitor}");

        // Output and exit codes reach the runtime as with any monitor.
        let hello = f
            .container(&sb, "hello", &["print", "hello via the zygote"], |_| {})
            .await;
        let status = f.wait_exited(&hello, Duration::from_secs(20)).await;
        assert_eq!((status.exit_code, status.reason.as_str()), (0, "Completed"));
        let lines = log_lines(&status.log_path);
        assert!(
            lines.len() == 1 && lines[0].ends_with("stdout F hello via the zygote"),
            "{lines:?}"
        );

        // Exec helpers come from the zygote too: while an exec with stdin
        // runs, the zygote has one more child; its output and exit code
        // come back through the pipes the zygote passed on.
        let before = children_of(zygote_pid).len();
        let mut session =
            f.rt.exec(ExecRequest {
                container_id: long.clone(),
                cmd: vec!["/testbin".into(), "cat".into()],
                tty: false,
                stdin: true,
            })
            .await
            .expect("exec");
        assert_eq!(children_of(zygote_pid).len(), before + 1, "exec helper");
        let mut stdin = session.stdin.take().expect("stdin");
        stdin
            .write_all(b"through the zygote\n")
            .await
            .expect("write");
        drop(stdin);
        let mut out = String::new();
        session.stdout.read_to_string(&mut out).await.expect("read");
        assert_eq!(out, "through the zygote\n");
        assert_eq!(session.exit_code.await.expect("exit code"), 0);
        // With a terminal (the helper connects to the caller's console
        // socket by path).
        let mut session =
            f.rt.exec(ExecRequest {
                container_id: long.clone(),
                cmd: vec!["/testbin".into(), "tty-info".into()],
                tty: true,
                stdin: false,
            })
            .await
            .expect("tty exec");
        let mut out = String::new();
        let mut buf = [0u8; 1024];
        let needle = "stdin-tty=true stdout-tty=true ctty=true";
        while !out.contains(needle) {
            match tokio::time::timeout(Duration::from_secs(20), session.stdout.read(&mut buf)).await
            {
                Ok(Ok(n)) if n > 0 => out.push_str(&String::from_utf8_lossy(&buf[..n])),
                other => panic!("no {needle:?} on the terminal ({other:?}); got {out:?}"),
            }
        }
        assert_eq!(session.exit_code.await.expect("exit code"), 0);
        let out =
            f.rt.exec_sync(
                &long,
                vec!["/testbin".into(), "exit".into(), "4".into()],
                Duration::from_secs(10),
            )
            .await
            .expect("exec_sync");
        assert_eq!(out.exit_code, 4);

        // Without the zygote, the runtime forks the monitor itself.
        let pid = nix::unistd::Pid::from_raw(zygote_pid);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).expect("kill the zygote");
        // Dead (a zombie until someone reaps it) before the next start.
        let stat = format!("/proc/{zygote_pid}/stat");
        while std::fs::read_to_string(&stat).ok().and_then(|s| {
            s.rsplit(')')
                .next()
                .map(|r| r.trim_start().starts_with('Z'))
        }) == Some(false)
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let after = f.container(&sb, "after", &["exit", "7"], |_| {}).await;
        let status = f.wait_exited(&after, Duration::from_secs(20)).await;
        assert_eq!(status.exit_code, 7);
        // The runtime noticed and reaped it: no zombie is left.
        let proc_dir = format!("/proc/{zygote_pid}");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::path::Path::new(&proc_dir).exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "the killed zygote {zygote_pid} was not reaped: {:?}",
                std::fs::read_to_string(format!("{proc_dir}/stat"))
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // And its exec helpers.
        let out =
            f.rt.exec_sync(
                &long,
                vec!["/testbin".into(), "exit".into(), "5".into()],
                Duration::from_secs(10),
            )
            .await
            .expect("exec_sync without the zygote");
        assert_eq!(out.exit_code, 5);

        // The monitor forked by the zygote outlived it.
        assert!(
            std::path::Path::new(&format!("/proc/{monitor}")).exists(),
            "monitor {monitor} died with the zygote"
        );
        f.rt.stop_container(&long, Duration::from_secs(5))
            .await
            .expect("stop");
        let status = f.wait_exited(&long, Duration::from_secs(20)).await;
        assert_eq!(
            status.state,
            skiff_runtime::cri_types::ContainerState::ContainerExited as i32
        );
        f.cleanup().await;
    });
}
