//! Container monitors forked by the monitor zygote instead of by the
//! runtime's own (multi-threaded) process, and the fallback when the zygote
//! is gone. Needs root, like the other built-in runtime tests.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{fixture_with_zygote, is_root, log_lines};
use skiff_runtime::{RuntimeService, Zygote};

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
fn monitors_are_forked_by_the_zygote_and_by_the_runtime_once_it_is_gone() {
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

        // Without the zygote, the runtime forks the monitor itself.
        let pid = nix::unistd::Pid::from_raw(zygote_pid);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).expect("kill the zygote");
        nix::sys::wait::waitpid(pid, None).expect("reap the zygote");
        let after = f.container(&sb, "after", &["exit", "7"], |_| {}).await;
        let status = f.wait_exited(&after, Duration::from_secs(20)).await;
        assert_eq!(status.exit_code, 7);

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
