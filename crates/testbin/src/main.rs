//! `skiff-testbin`: the program inside skiff's test image, in the spirit of
//! Kubernetes' `agnhost`. One binary, one subcommand per behaviour a test
//! needs from a container (sleep, exit with a code, print, serve HTTP, connect,
//! allocate memory until the OOM killer comes).
//!
//! It must stay tiny and dependency-free (std and libc only) so the test image
//! can be built offline from the compiled binary and its shared libraries. It
//! must never be used by production code.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

const USAGE: &str = "usage: skiff-testbin <command> [args]
commands:
  pause                          print 'paused', sleep until SIGTERM/SIGINT, exit 0
  sleep SECONDS                  sleep, then exit 0
  exit CODE                      exit with CODE
  print TEXT...                  print TEXT on stdout (one line)
  print-stderr TEXT...           print TEXT on stderr (one line)
  cat FILE                       copy FILE to stdout
  hostname                       print the hostname
  env NAME                       print the value of environment variable NAME
  connect HOST:PORT              exit 0 when a TCP connection succeeds, 1 otherwise
  alloc-memory MIB               allocate and touch MIB MiB, then sleep forever
  netexec [--http-port P] [--tcp-port P]
                                 HTTP server (/, /hostname, /healthz, /echo?msg=,
                                 /exit?code=N, /env?name=) and a TCP echo server";

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
    let args: Vec<String> = std::env::args().skip(1).collect();
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
            let path = arg(args, 0)?;
            let mut file = std::fs::File::open(path).map_err(|e| format!("{path}: {e}"))?;
            let mut out = std::io::stdout().lock();
            std::io::copy(&mut file, &mut out).map_err(|e| format!("{path}: {e}"))?;
            Ok(0)
        }
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
        "/healthz" => ("200 OK", "ok".to_string()),
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
    use super::percent_decode;

    #[test]
    fn percent_decode_handles_escapes_plus_and_truncated_escapes() {
        assert_eq!(percent_decode("a%20b+c"), "a b c");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%4"), "%4");
    }
}
