//! `skiff-testbin`: the program inside skiff's test image, in the spirit of
//! Kubernetes' `agnhost`. One binary, one subcommand per behaviour a test
//! needs from a container (sleep, exit with a code, print, serve HTTP, connect,
//! allocate memory until the OOM killer comes, report its terminal, tick).
//!
//! It is also a multi-call binary: run as `tar` or `test` (the image links
//! `/bin/tar` and `/bin/test` to it) it is the small subset of those tools
//! `kubectl cp` runs in a container (`tar cf - PATH`, `tar xmf - -C DIR`,
//! `test -d PATH`).
//!
//! It must stay tiny, with few dependencies (std, libc and the pure-Rust
//! `tar`) so the test image can be built offline from the compiled binary
//! and its shared libraries. It must never be used by production code.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Whether netexec's `/healthz` fails (set by `/fail-healthz`, cleared by
/// `/heal`).
static UNHEALTHY: AtomicBool = AtomicBool::new(false);

const USAGE: &str = "usage: skiff-testbin <command> [args]
commands:
  pause                          print 'paused', sleep until SIGTERM/SIGINT, exit 0
  ignore-term                    ignore SIGTERM, print 'ignoring SIGTERM', sleep
                                 until killed (graceful termination tests)
  sleep SECONDS                  sleep, then exit 0
  exit CODE                      exit with CODE
  print TEXT...                  print TEXT on stdout (one line)
  print-stderr TEXT...           print TEXT on stderr (one line)
  cat [FILE]                     copy FILE (or stdin, also for -) to stdout
  tty-info [--loop]              print whether stdin/stdout are terminals, whether
                                 /dev/tty opens (a controlling terminal) and the
                                 terminal size; with --loop, then read lines:
                                 'size' prints the size again, 'exit' exits,
                                 anything else is echoed as 'got LINE'
  ticker MILLIS [TEXT]           print 'TEXT N' (default 'tick N') every MILLIS ms
  tar c|x|t [f -] [-C DIR] ...   a subset of tar (also run as 'tar')
  test -d|-f|-e PATH             a subset of test (also run as 'test')
  hostname                       print the hostname
  env NAME                       print the value of environment variable NAME
  connect HOST:PORT              exit 0 when a TCP connection succeeds, 1 otherwise
  connect-rate HOST:PORT SECONDS open TCP connections one after another for
                                 SECONDS (each: connect, one echo round trip
                                 with netexec's TCP port, reset), then print
                                 'connections N failures F seconds S'
  http-get URL                   GET http://HOST:PORT/PATH, print the body; exit 1
                                 on a connection error or a non-200 status
  lookup NAME                    resolve NAME (the libc resolver), print each address
  alloc-memory MIB               allocate and touch MIB MiB, then sleep forever
  netexec [--http-port P] [--tcp-port P]
                                 HTTP server (/, /hostname, /healthz, /echo?msg=,
                                 /exit?code=N, /env?name=, /fail-healthz and /heal
                                 toggle /healthz) and a TCP echo server";

extern "C" fn on_term(_signal: libc::c_int) {
    // Async-signal-safe: only _exit.
    unsafe { libc::_exit(0) }
}

/// As PID 1 of a PID namespace the kernel ignores signals without a handler,
/// so every subcommand installs one that exits on SIGTERM and SIGINT.
fn install_signal_handlers() {
    let handler: extern "C" fn(libc::c_int) = on_term;
    unsafe {
        libc::signal(libc::SIGTERM, handler as libc::sighandler_t);
        libc::signal(libc::SIGINT, handler as libc::sighandler_t);
    }
}

fn main() -> ExitCode {
    install_signal_handlers();
    let mut args: Vec<String> = std::env::args().collect();
    // Multi-call: `tar …` and `test …` through the image's links.
    let called_as = args
        .first()
        .and_then(|a| a.rsplit('/').next())
        .unwrap_or_default()
        .to_string();
    if matches!(called_as.as_str(), "tar" | "test") {
        args[0] = called_as;
    } else {
        args.remove(0);
    }
    let Some(command) = args.first() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let rest = &args[1..];
    match run(command, rest) {
        Ok(code) => ExitCode::from(code),
        Err(message) => {
            eprintln!("skiff-testbin {command}: {message}");
            ExitCode::from(2)
        }
    }
}

fn run(command: &str, args: &[String]) -> Result<u8, String> {
    match command {
        "pause" => {
            // Printed once the SIGTERM handler is in place: tests wait for it.
            println!("paused");
            let _ = std::io::stdout().flush();
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        "ignore-term" => {
            unsafe { libc::signal(libc::SIGTERM, libc::SIG_IGN) };
            // Printed once SIGTERM is ignored: tests wait for it.
            println!("ignoring SIGTERM");
            let _ = std::io::stdout().flush();
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        "sleep" => {
            let seconds: f64 = arg(args, 0)?
                .parse()
                .map_err(|e| format!("bad SECONDS: {e}"))?;
            std::thread::sleep(Duration::from_secs_f64(seconds));
            Ok(0)
        }
        "exit" => arg(args, 0)?.parse().map_err(|e| format!("bad CODE: {e}")),
        "print" => {
            println!("{}", args.join(" "));
            Ok(0)
        }
        "print-stderr" => {
            eprintln!("{}", args.join(" "));
            Ok(0)
        }
        "cat" => {
            let mut out = std::io::stdout().lock();
            match args.first().map(String::as_str) {
                None | Some("-") => {
                    // Line by line, so an interactive client sees each echo.
                    let mut stdin = std::io::stdin().lock();
                    let mut line = Vec::new();
                    loop {
                        line.clear();
                        let n = stdin
                            .read_until(b'\n', &mut line)
                            .map_err(|e| format!("stdin: {e}"))?;
                        if n == 0 {
                            break;
                        }
                        out.write_all(&line).map_err(|e| format!("stdout: {e}"))?;
                        out.flush().map_err(|e| format!("stdout: {e}"))?;
                    }
                }
                Some(path) => {
                    let mut file = std::fs::File::open(path).map_err(|e| format!("{path}: {e}"))?;
                    std::io::copy(&mut file, &mut out).map_err(|e| format!("{path}: {e}"))?;
                }
            }
            Ok(0)
        }
        "tty-info" => tty_info(args.first().map(String::as_str) == Some("--loop")),
        "ticker" => {
            let millis: u64 = arg(args, 0)?
                .parse()
                .map_err(|e| format!("bad MILLIS: {e}"))?;
            let text = args.get(1).map(String::as_str).unwrap_or("tick");
            let mut out = std::io::stdout();
            for n in 0u64.. {
                let _ = writeln!(out, "{text} {n}");
                let _ = out.flush();
                std::thread::sleep(Duration::from_millis(millis));
            }
            Ok(0)
        }
        "tar" => tar_main(args),
        "test" => test_main(args),
        "hostname" => {
            println!("{}", hostname());
            Ok(0)
        }
        "env" => {
            let name = arg(args, 0)?;
            println!("{}", std::env::var(name).unwrap_or_default());
            Ok(0)
        }
        "connect" => {
            let target = arg(args, 0)?;
            Ok(if connect(target) { 0 } else { 1 })
        }
        "connect-rate" => {
            let seconds: f64 = arg(args, 1)?.parse().map_err(|e| format!("seconds: {e}"))?;
            connect_rate(arg(args, 0)?, Duration::from_secs_f64(seconds))
        }
        "http-get" => http_get(arg(args, 0)?),
        "lookup" => {
            let addrs = (arg(args, 0)?, 0)
                .to_socket_addrs()
                .map_err(|e| format!("lookup: {e}"))?;
            let mut ips: Vec<String> = addrs.map(|a| a.ip().to_string()).collect();
            ips.sort();
            ips.dedup();
            for ip in ips {
                println!("{ip}");
            }
            Ok(0)
        }
        "alloc-memory" => {
            let mib: usize = arg(args, 0)?.parse().map_err(|e| format!("bad MIB: {e}"))?;
            let mut chunks = Vec::with_capacity(mib);
            for i in 0..mib {
                // Touch every page so the memory is really charged.
                chunks.push(vec![(i % 251) as u8 + 1; 1 << 20]);
            }
            println!("allocated {mib} MiB");
            let _ = std::io::stdout().flush();
            loop {
                std::thread::sleep(Duration::from_secs(3600));
                std::hint::black_box(&chunks);
            }
        }
        "netexec" => netexec(args),
        "help" | "--help" | "-h" => {
            println!("{USAGE}");
            Ok(0)
        }
        other => Err(format!("unknown command {other:?}\n{USAGE}")),
    }
}

/// `(columns, rows)` of the terminal on `fd`, if it is one.
fn terminal_size(fd: libc::c_int) -> Option<(u16, u16)> {
    let mut size: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes one winsize.
    (unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut size) } == 0)
        .then_some((size.ws_col, size.ws_row))
}

fn describe_terminal() -> String {
    // SAFETY: isatty only inspects the descriptors.
    let (stdin_tty, stdout_tty) = unsafe { (libc::isatty(0) == 1, libc::isatty(1) == 1) };
    // /dev/tty opens only for a process with a controlling terminal.
    let ctty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .is_ok();
    let size = terminal_size(1)
        .map(|(c, r)| format!("{c}x{r}"))
        .unwrap_or_else(|| "none".into());
    format!("stdin-tty={stdin_tty} stdout-tty={stdout_tty} ctty={ctty} size={size}")
}

fn tty_info(repeat: bool) -> Result<u8, String> {
    let mut out = std::io::stdout();
    let _ = writeln!(out, "{}", describe_terminal());
    let _ = out.flush();
    if !repeat {
        return Ok(0);
    }
    let mut line = String::new();
    let stdin = std::io::stdin();
    loop {
        line.clear();
        if stdin
            .read_line(&mut line)
            .map_err(|e| format!("stdin: {e}"))?
            == 0
        {
            return Ok(0);
        }
        match line.trim() {
            "exit" => return Ok(0),
            "size" => {
                let _ = writeln!(out, "{}", describe_terminal());
            }
            other => {
                let _ = writeln!(out, "got {other}");
            }
        }
        let _ = out.flush();
    }
}

/// `test -d|-f|-e PATH` (what `kubectl cp` asks before copying into a pod).
fn test_main(args: &[String]) -> Result<u8, String> {
    let (op, path) = match args {
        [op, path] => (op.as_str(), std::path::Path::new(path)),
        _ => return Err("usage: test -d|-f|-e PATH".into()),
    };
    let holds = match op {
        "-d" => path.is_dir(),
        "-f" => path.is_file(),
        "-e" => path.exists(),
        other => return Err(format!("unsupported test {other}")),
    };
    Ok(if holds { 0 } else { 1 })
}

/// What a `tar` command line asks for.
#[derive(Debug, Default, PartialEq)]
struct TarArgs {
    mode: Option<char>,
    file: Option<String>,
    directory: Option<String>,
    keep_mtime: bool,
    same_permissions: bool,
    same_owner: bool,
    dereference: bool,
    verbose: bool,
    members: Vec<String>,
}

/// GNU tar's conventions for the options used here: a first word without a
/// dash is a bundle of short options (`cf`, `xmf`), a bundle's `f` and `C`
/// take the following words in order, long options may use `=`. As root,
/// permissions and owners are restored unless `--no-same-*` says not to.
fn parse_tar_args(args: &[String]) -> Result<TarArgs, String> {
    let mut parsed = TarArgs {
        keep_mtime: true,
        same_permissions: true,
        same_owner: true,
        ..Default::default()
    };
    let mut words = args
        .iter()
        .cloned()
        .collect::<std::collections::VecDeque<_>>();
    if let Some(first) = words.front_mut()
        && !first.starts_with('-')
    {
        first.insert(0, '-');
    }
    let mut only_members = false;
    while let Some(word) = words.pop_front() {
        if only_members || !word.starts_with('-') || word == "-" {
            parsed.members.push(word);
            continue;
        }
        if word == "--" {
            only_members = true;
            continue;
        }
        if let Some(long) = word.strip_prefix("--") {
            let (name, inline) = match long.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (long, None),
            };
            let mut value = || {
                inline
                    .clone()
                    .or_else(|| words.pop_front())
                    .ok_or_else(|| format!("--{name} needs a value"))
            };
            match name {
                "create" => parsed.mode = Some('c'),
                "extract" | "get" => parsed.mode = Some('x'),
                "list" => parsed.mode = Some('t'),
                "file" => parsed.file = Some(value()?),
                "directory" => parsed.directory = Some(value()?),
                "touch" => parsed.keep_mtime = false,
                "no-same-permissions" => parsed.same_permissions = false,
                "same-permissions" | "preserve-permissions" => parsed.same_permissions = true,
                "no-same-owner" => parsed.same_owner = false,
                "same-owner" => parsed.same_owner = true,
                "dereference" => parsed.dereference = true,
                "verbose" => parsed.verbose = true,
                other => return Err(format!("unsupported option --{other}")),
            }
            continue;
        }
        for flag in word[1..].chars() {
            match flag {
                'c' | 'x' | 't' => parsed.mode = Some(flag),
                'f' => parsed.file = Some(words.pop_front().ok_or("-f needs a value")?),
                'C' => parsed.directory = Some(words.pop_front().ok_or("-C needs a value")?),
                'm' => parsed.keep_mtime = false,
                'p' => parsed.same_permissions = true,
                'o' => parsed.same_owner = false,
                'h' => parsed.dereference = true,
                'v' => parsed.verbose = true,
                other => return Err(format!("unsupported option -{other}")),
            }
        }
    }
    Ok(parsed)
}

fn tar_main(args: &[String]) -> Result<u8, String> {
    let t = parse_tar_args(args)?;
    if t.file.as_deref().is_some_and(|f| f != "-") {
        return Err("only -f - (stdin or stdout) is supported".into());
    }
    let base = std::path::PathBuf::from(t.directory.as_deref().unwrap_or("."));
    match t.mode {
        Some('c') => {
            if t.members.is_empty() {
                return Err("refusing to create an empty archive".into());
            }
            let stdout = std::io::stdout().lock();
            let mut builder = tar::Builder::new(std::io::BufWriter::new(stdout));
            builder.follow_symlinks(t.dereference);
            for member in &t.members {
                // As GNU tar: names are relative, leading slashes dropped.
                let name = member.trim_start_matches('/');
                let name = if name.is_empty() { "." } else { name };
                let source = base.join(member);
                let meta = if t.dereference {
                    std::fs::metadata(&source)
                } else {
                    std::fs::symlink_metadata(&source)
                }
                .map_err(|e| format!("{member}: {e}"))?;
                let appended = if meta.is_dir() {
                    builder.append_dir_all(name, &source)
                } else {
                    builder.append_path_with_name(&source, name)
                };
                appended.map_err(|e| format!("{member}: {e}"))?;
                if t.verbose {
                    eprintln!("{name}");
                }
            }
            let mut out = builder.into_inner().map_err(|e| format!("writing: {e}"))?;
            out.flush().map_err(|e| format!("writing: {e}"))?;
            Ok(0)
        }
        Some('x') => {
            let stdin = std::io::stdin().lock();
            let mut archive = tar::Archive::new(stdin);
            archive.set_preserve_permissions(t.same_permissions);
            archive.set_preserve_ownerships(t.same_owner);
            archive.set_preserve_mtime(t.keep_mtime);
            archive.set_overwrite(true);
            for entry in archive.entries().map_err(|e| format!("reading: {e}"))? {
                let mut entry = entry.map_err(|e| format!("reading: {e}"))?;
                let name = entry
                    .path()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default();
                // Refuses names escaping `base` (`..`, absolute links).
                entry.unpack_in(&base).map_err(|e| format!("{name}: {e}"))?;
                if t.verbose {
                    eprintln!("{name}");
                }
            }
            Ok(0)
        }
        Some('t') => {
            let stdin = std::io::stdin().lock();
            let mut archive = tar::Archive::new(stdin);
            for entry in archive.entries().map_err(|e| format!("reading: {e}"))? {
                let entry = entry.map_err(|e| format!("reading: {e}"))?;
                println!(
                    "{}",
                    entry.path().map_err(|e| format!("reading: {e}"))?.display()
                );
            }
            Ok(0)
        }
        _ => Err("one of c, x or t is required".into()),
    }
}

fn arg(args: &[String], index: usize) -> Result<&str, String> {
    args.get(index)
        .map(String::as_str)
        .ok_or_else(|| format!("missing argument {}\n{USAGE}", index + 1))
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return String::new();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

fn connect(target: &str) -> bool {
    let Ok(addrs) = target.to_socket_addrs() else {
        return false;
    };
    addrs
        .into_iter()
        .any(|addr| TcpStream::connect_timeout(&addr, Duration::from_secs(3)).is_ok())
}

/// Connections to `target` one after another for `span`: connect, send a
/// line, read its echo, then close with a reset (linger 0) so the client
/// keeps no TIME_WAIT state and its ports do not run out. Prints the
/// counts; fails only when no connection worked.
fn connect_rate(target: &str, span: Duration) -> Result<u8, String> {
    use std::os::fd::AsRawFd;
    let addr = target
        .to_socket_addrs()
        .map_err(|e| format!("{target}: {e}"))?
        .next()
        .ok_or_else(|| format!("{target}: no address"))?;
    let start = Instant::now();
    let (mut ok, mut failed) = (0u64, 0u64);
    let mut buf = [0u8; 8];
    while start.elapsed() < span {
        let round = (|| -> std::io::Result<()> {
            let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
            stream.set_read_timeout(Some(Duration::from_secs(3)))?;
            stream.write_all(b"x\n")?;
            stream.read_exact(&mut buf[..2])?;
            let linger = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            // SAFETY: a valid socket and a correctly sized option value.
            unsafe {
                libc::setsockopt(
                    stream.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    (&linger as *const libc::linger).cast(),
                    std::mem::size_of::<libc::linger>() as libc::socklen_t,
                );
            }
            Ok(())
        })();
        match round {
            Ok(()) => ok += 1,
            Err(_) => failed += 1,
        }
    }
    println!(
        "connections {ok} failures {failed} seconds {:.3}",
        start.elapsed().as_secs_f64()
    );
    Ok(if ok > 0 { 0 } else { 1 })
}

/// A minimal HTTP/1.0 GET of `http://HOST:PORT/PATH`; prints the body.
fn http_get(url: &str) -> Result<u8, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("only http:// URLs: {url}"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = authority
        .to_socket_addrs()
        .map_err(|e| format!("{authority}: {e}"))?
        .next()
        .ok_or_else(|| format!("{authority}: no address"))?;
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {authority}\r\n\r\n")
        .map_err(|e| format!("send: {e}"))?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .map_err(|e| format!("read: {e}"))?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("malformed response: {response:?}"))?;
    print!("{body}");
    let _ = std::io::stdout().flush();
    let status = head.lines().next().unwrap_or_default();
    Ok(if status.split_whitespace().nth(1) == Some("200") {
        0
    } else {
        eprintln!("{status}");
        1
    })
}

fn netexec(args: &[String]) -> Result<u8, String> {
    let mut http_port: u16 = 8080;
    let mut tcp_port: Option<u16> = None;
    let mut iter = args.iter();
    while let Some(flag) = iter.next() {
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (flag.as_str(), None),
        };
        let value = match inline {
            Some(v) => v,
            None => iter
                .next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))?,
        };
        let port: u16 = value.parse().map_err(|e| format!("bad {name}: {e}"))?;
        match name {
            "--http-port" => http_port = port,
            "--tcp-port" => tcp_port = Some(port),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if let Some(port) = tcp_port {
        let listener =
            TcpListener::bind(("0.0.0.0", port)).map_err(|e| format!("tcp port {port}: {e}"))?;
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                std::thread::spawn(move || tcp_echo(stream));
            }
        });
    }
    let listener = TcpListener::bind(("0.0.0.0", http_port))
        .map_err(|e| format!("http port {http_port}: {e}"))?;
    println!("netexec serving HTTP on :{http_port}");
    let _ = std::io::stdout().flush();
    for stream in listener.incoming().flatten() {
        std::thread::spawn(move || {
            let _ = serve_http(stream);
        });
    }
    Ok(0)
}

fn tcp_echo(mut stream: TcpStream) {
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if stream.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}

fn serve_http(stream: TcpStream) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    // Drain the headers.
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
    }
    let target = request_line.split_whitespace().nth(1).unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let param = |name: &str| -> String {
        query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| percent_decode(v))
            .unwrap_or_default()
    };
    let mut exit_code = None;
    let (status, body) = match path {
        "/" | "/hostname" => ("200 OK", hostname()),
        "/healthz" if UNHEALTHY.load(Ordering::SeqCst) => {
            ("503 Service Unavailable", "failing".to_string())
        }
        "/healthz" => ("200 OK", "ok".to_string()),
        // Toggles for readiness and liveness tests, like agnhost's.
        "/fail-healthz" => {
            UNHEALTHY.store(true, Ordering::SeqCst);
            ("200 OK", "healthz now fails".to_string())
        }
        "/heal" => {
            UNHEALTHY.store(false, Ordering::SeqCst);
            ("200 OK", "healthz now succeeds".to_string())
        }
        "/echo" => ("200 OK", param("msg")),
        "/env" => ("200 OK", std::env::var(param("name")).unwrap_or_default()),
        "/exit" => match param("code").parse::<i32>() {
            Ok(code) => {
                exit_code = Some(code);
                ("200 OK", format!("exiting with {code}"))
            }
            Err(_) => ("400 Bad Request", "bad code".to_string()),
        },
        _ => ("404 Not Found", "not found".to_string()),
    };
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()?;
    if let Some(code) = exit_code {
        std::process::exit(code);
    }
    Ok(())
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(hi), Some(lo)) => {
                        out.push((hi * 16 + lo) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::{TarArgs, parse_tar_args, percent_decode};

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn tar_command_lines_of_kubectl_cp_parse() {
        let cases = [
            (
                "cf - /tmp/x",
                TarArgs {
                    mode: Some('c'),
                    file: Some("-".into()),
                    keep_mtime: true,
                    same_permissions: true,
                    same_owner: true,
                    members: vec!["/tmp/x".into()],
                    ..Default::default()
                },
            ),
            (
                "-xmf - -C /tmp",
                TarArgs {
                    mode: Some('x'),
                    file: Some("-".into()),
                    directory: Some("/tmp".into()),
                    same_permissions: true,
                    same_owner: true,
                    ..Default::default()
                },
            ),
            (
                "--no-same-permissions --no-same-owner -xmf - -C /d",
                TarArgs {
                    mode: Some('x'),
                    file: Some("-".into()),
                    directory: Some("/d".into()),
                    ..Default::default()
                },
            ),
            (
                "hcf - --directory=/srv a b",
                TarArgs {
                    mode: Some('c'),
                    file: Some("-".into()),
                    directory: Some("/srv".into()),
                    keep_mtime: true,
                    same_permissions: true,
                    same_owner: true,
                    dereference: true,
                    members: vec!["a".into(), "b".into()],
                    ..Default::default()
                },
            ),
        ];
        for (line, want) in cases {
            assert_eq!(parse_tar_args(&words(line)).unwrap(), want, "{line}");
        }
        assert!(parse_tar_args(&words("-xf")).is_err());
        assert!(parse_tar_args(&words("-xzf -")).is_err());
    }

    #[test]
    fn percent_decode_handles_escapes_plus_and_truncated_escapes() {
        assert_eq!(percent_decode("a%20b+c"), "a b c");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%4"), "%4");
    }
}
