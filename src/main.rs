//! The `reel` binary: parse the command line, then call the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "reel",
    version,
    about = "A distributed video platform: upload, transcode, stream HLS"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a node.
    Serve {
        /// Node-local data directory (SQLite, scratch; objects under DIR/objects by default).
        /// Default ./reel-data; relative to the working directory.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// HTTP listen address. Default 127.0.0.1:8080: loopback unless you choose otherwise.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Read settings from a cluster.toml (its relative paths are relative to the file).
        /// --data-dir, --listen and --storage, when given, win over the file.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Which [[node]] of the config file this is.
        #[arg(long)]
        node: Option<String>,
        /// Object store without a config file: a directory, `memory:`, or `s3://bucket` (with
        /// the standard AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID and
        /// AWS_SECRET_ACCESS_KEY variables). Default: DATA_DIR/objects.
        #[arg(long)]
        storage: Option<String>,
        /// The URL clients reach this service at (a load balancer), for absolute tus
        /// `Location` answers; wins over `public_url` in the config file.
        #[arg(long)]
        public_url: Option<String>,
        /// Log as JSON lines.
        #[arg(long)]
        json_logs: bool,
        /// Stop, as on SIGTERM, when standard input reaches its end: `cluster-up` starts its
        /// nodes with this and a pipe it holds, so that they stop when it is gone, even after
        /// a `kill -9` of it (which runs no cleanup of its own).
        #[arg(long)]
        stop_on_stdin_eof: bool,
    },
    /// Start every node of a cluster.toml as child processes of this one (a local cluster for
    /// trying reel out; in production start each node on its own machine with `serve`). A node
    /// that exits is started again after 2 s.
    ClusterUp {
        /// The cluster file.
        #[arg(long, default_value = "cluster.toml")]
        config: PathBuf,
    },
    /// Upload a video file (tus: resumes by itself after a dropped connection; a file the
    /// server already holds is not sent again) and print its id and state.
    Upload {
        /// The file.
        file: PathBuf,
        /// Server URL. Repeat it (or separate URLs with commas) to name more nodes of the
        /// cluster: when one cannot be reached or stops answering for 30 s, the upload goes on
        /// through the next.
        #[arg(
            long = "server",
            value_delimiter = ',',
            default_value = "http://127.0.0.1:8080"
        )]
        servers: Vec<String>,
        /// Wait until processing ends, showing progress.
        #[arg(long)]
        wait: bool,
    },
    /// Print a playback session's timeline and the rendition switches its logs prove.
    Session {
        /// The session id (`{node}-{16 hex}`, from `x-reel-session` or the playlist URIs).
        session_id: String,
        /// A node data directory whose playback log to read; repeat it for every node the
        /// session may have moved to.
        #[arg(long = "data-dir", default_value = "./reel-data")]
        data_dirs: Vec<PathBuf>,
        /// Also write an SVG chart of rendition over time to this file.
        #[arg(long)]
        svg: Option<PathBuf>,
    },
    /// Process a failed video again from its stored source (after fixing what made it fail).
    Reprocess {
        /// The video id.
        video_id: String,
        /// Server URL. Repeat it (or separate URLs with commas) to name more nodes of the
        /// cluster: one that cannot be reached, or does not answer within 30 s, is left for
        /// the next.
        #[arg(
            long = "server",
            value_delimiter = ',',
            default_value = "http://127.0.0.1:8080"
        )]
        servers: Vec<String>,
        /// Wait until the video is ready or failed again, showing progress.
        #[arg(long)]
        wait: bool,
    },
    /// Show a video's state.
    Status {
        /// The video id.
        video_id: String,
        /// Server URL. Repeat it (or separate URLs with commas) to name more nodes of the
        /// cluster: one that cannot be reached is left for the next.
        #[arg(
            long = "server",
            value_delimiter = ',',
            default_value = "http://127.0.0.1:8080"
        )]
        servers: Vec<String>,
        /// Wait until the video is ready or failed, showing progress.
        #[arg(long)]
        wait: bool,
    },
}

/// The log filter when `RUST_LOG` is unset: progress at `info`; the actor runtime's chatter
/// and warp's two lines per request (`warp::filters::trace` logs every success at `info`)
/// only at `warn`, so failed requests are still logged. A player's requests are in the
/// playback log; `RUST_LOG=info,warp::filters::trace=info` brings those lines back.
const DEFAULT_LOG_FILTER: &str = "info,ractor=warn,warp::filters::trace=warn";

fn init_logs(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Completes when standard input reaches its end (or cannot be read): the write end of
/// `cluster-up`'s pipe closed, which the kernel does when `cluster-up` exits however it
/// exits. Read on a thread of its own, not tokio's blocking pool: a read that never ends
/// there would hold the runtime's shutdown.
async fn stdin_closed() {
    let (tx, rx) = tokio::sync::oneshot::channel::<String>();
    let spawned = std::thread::Builder::new()
        .name("stdin-watch".into())
        .spawn(move || {
            use std::io::Read;
            let mut stdin = std::io::stdin().lock();
            let mut buf = [0u8; 256];
            let end = loop {
                match stdin.read(&mut buf) {
                    Ok(0) => break "its end".to_string(),
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => break format!("an error: {e}"),
                }
            };
            let _ = tx.send(end);
        });
    match spawned {
        // A dropped sender (the thread ended otherwise) also ends the wait.
        Ok(_) => {
            let end = rx.await.unwrap_or_else(|_| "its watch ending".into());
            tracing::warn!(
                "standard input reached {end} (the cluster-up that started this node is \
                 gone): stopping"
            );
        }
        Err(e) => {
            tracing::warn!("cannot watch standard input ({e}); stopping only on a signal");
            std::future::pending::<()>().await
        }
    }
}

fn main() -> ExitCode {
    match reel::runtime() {
        Ok(rt) => rt.block_on(run()),
        Err(e) => {
            eprintln!("reel: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve {
            data_dir,
            listen,
            config,
            node,
            storage,
            public_url,
            json_logs,
            stop_on_stdin_eof,
        } => {
            init_logs(json_logs);
            let flags = reel::config::ServeFlags {
                config,
                node,
                data_dir,
                listen,
                storage,
                public_url,
            };
            let env: std::collections::HashMap<String, String> = std::env::vars().collect();
            let config = match std::env::current_dir()
                .map_err(|e| format!("cannot read the working directory: {e}"))
                .and_then(|cwd| flags.resolve(&cwd, &env).map_err(|e| e.to_string()))
            {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            let shutdown = async move {
                if !stop_on_stdin_eof {
                    return shutdown_signal().await;
                }
                tokio::select! {
                    _ = shutdown_signal() => {}
                    _ = stdin_closed() => {}
                }
            };
            match reel::run(config, shutdown).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::ClusterUp { config } => cluster_up(&config).await,
        Command::Upload {
            file,
            servers,
            wait,
        } => {
            let opts = reel::client::UploadOptions::default();
            let v = match reel::client::upload_with(&servers, &file, &opts).await {
                Ok(v) => v,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let id = v["video_id"].as_str().unwrap_or("").to_string();
            let v = if wait {
                match reel::client::status(&servers, &id, Some(Duration::from_secs(24 * 3600)))
                    .await
                {
                    Ok(v) => v,
                    Err(e) => {
                        eprintln!("error: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            } else {
                v
            };
            print_status(&v, v["duplicate"].as_bool() == Some(true))
        }
        Command::Session {
            session_id,
            data_dirs,
            svg,
        } => session_timeline(&session_id, &data_dirs, svg.as_deref()),
        Command::Reprocess {
            video_id,
            servers,
            wait,
        } => {
            let answer =
                reel::client::reprocess(&servers, &video_id, reel::client::DEFAULT_STALL).await;
            if let Err(e) = answer {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
            show_status(&servers, &video_id, wait).await
        }
        Command::Status {
            video_id,
            servers,
            wait,
        } => show_status(&servers, &video_id, wait).await,
    }
}

/// Print a video's state (waiting for `ready` or `failed` with `wait`); exit code 1 when
/// failed or unreachable.
async fn show_status(servers: &[String], video_id: &str, wait: bool) -> ExitCode {
    let wait = wait.then(|| Duration::from_secs(24 * 3600));
    match reel::client::status(servers, video_id, wait).await {
        Ok(v) => print_status(&v, false),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A node `reel cluster-up` started.
struct StartedNode {
    /// Its `[[node]]` id.
    id: String,
    /// Its `reel serve` process.
    process: tokio::process::Child,
    /// The write end of the pipe the node reads (`serve --stop-on-stdin-eof`), which only
    /// `cluster-up` holds: when `cluster-up` exits, even by `kill -9`, the kernel closes it
    /// and the node stops instead of running on, orphaned. Held here, taken out of `process`:
    /// tokio's `Child::wait` closes a stdin the child still holds.
    _pipe: Option<tokio::process::ChildStdin>,
}

/// `reel cluster-up`: validate every node's config, start one `reel serve` child per node,
/// start again any that exits, and stop them all on Ctrl-C / SIGTERM.
async fn cluster_up(config: &std::path::Path) -> ExitCode {
    let config = &match reel::config::absolute_path(config, std::path::Path::new(".")) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let text = match std::fs::read_to_string(config) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: cannot read {}: {e}", config.display());
            return ExitCode::from(2);
        }
    };
    let file: reel::config::ClusterFile = match toml::from_str(&text) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {} is not valid: {e}", config.display());
            return ExitCode::from(2);
        }
    };
    let ids: Vec<String> = file.nodes.iter().map(|n| n.id.clone()).collect();
    // How long a node may take to stop: its drain and the margin after it.
    let mut stop_bound = Duration::ZERO;
    for id in &ids {
        match reel::config::Config::from_file(config, Some(id)) {
            Ok(c) => {
                stop_bound =
                    stop_bound.max(c.limits.shutdown_drain() + reel::config::Limits::STOP_MARGIN);
            }
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        }
    }
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: cannot find the reel binary: {e}");
            return ExitCode::FAILURE;
        }
    };
    let spawn = |id: &str| {
        tokio::process::Command::new(&exe)
            .args(["serve", "--stop-on-stdin-eof", "--config"])
            .arg(config)
            .args(["--node", id])
            .stdin(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map(|mut process| StartedNode {
                id: id.to_string(),
                _pipe: process.stdin.take(),
                process,
            })
    };
    let mut children = Vec::new();
    for id in &ids {
        match spawn(id) {
            Ok(node) => {
                eprintln!("started {id} (pid {})", node.process.id().unwrap_or(0));
                children.push(node);
            }
            Err(e) => {
                eprintln!("error: cannot start {id}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    // A node that exits (a crash, a kill -9 to watch the others take over) is started again
    // after RESTART_DELAY, as a service manager would: the others carry on meanwhile and it
    // rejoins by itself. Ctrl-C or SIGTERM stops them all.
    const RESTART_DELAY: Duration = Duration::from_secs(2);
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let code = loop {
        let any_exit = futures::future::select_all(
            children
                .iter_mut()
                .enumerate()
                .map(|(i, n)| Box::pin(async move { (i, n.process.wait().await) })),
        );
        let (i, status) = tokio::select! {
            _ = &mut shutdown => break ExitCode::SUCCESS,
            ((i, status), _, _) = any_exit => (i, status),
        };
        let id = children[i].id.clone();
        eprintln!(
            "{id} exited ({status:?}); starting it again in {}s",
            RESTART_DELAY.as_secs()
        );
        tokio::select! {
            _ = &mut shutdown => break ExitCode::SUCCESS,
            _ = tokio::time::sleep(RESTART_DELAY) => {}
        }
        match spawn(&id) {
            Ok(node) => {
                eprintln!(
                    "started {id} again (pid {})",
                    node.process.id().unwrap_or(0)
                );
                children[i] = node;
            }
            Err(e) => {
                eprintln!("error: cannot start {id} again: {e}; stopping the others");
                break ExitCode::FAILURE;
            }
        }
    };
    // Every node is told at once and they stop side by side: one after another, a cluster
    // took up to three stops to go down, and the nodes still running claimed the videos of
    // each that stopped, only to be stopped themselves.
    for node in &children {
        if let Some(pid) = node.process.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }
    let stops = children.iter_mut().map(|node| async move {
        match tokio::time::timeout(stop_bound, node.process.wait()).await {
            Ok(_) => eprintln!("stopped {}", node.id),
            Err(_) => {
                let _ = node.process.kill().await;
                eprintln!(
                    "{} had not stopped {} s after SIGTERM (limits.shutdown_drain_seconds \
                     and {} s); killed",
                    node.id,
                    stop_bound.as_secs(),
                    reel::config::Limits::STOP_MARGIN.as_secs()
                );
            }
        }
    });
    futures::future::join_all(stops).await;
    code
}

/// `reel session`: print a session's timeline from the playback logs (and an SVG chart).
fn session_timeline(
    session_id: &str,
    data_dirs: &[PathBuf],
    svg: Option<&std::path::Path>,
) -> ExitCode {
    let t = match reel::streaming::timeline::Timeline::load(data_dirs, session_id) {
        Ok((t, notes)) => {
            for n in notes {
                eprintln!("note: {n}");
            }
            t
        }
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if t.records.is_empty() {
        eprintln!(
            "error: no records of session {session_id} in the playback logs of {data_dirs:?}"
        );
        return ExitCode::FAILURE;
    }
    print!("{}", t.render_text());
    if let Some(path) = svg {
        if let Err(e) = std::fs::write(path, t.render_svg()) {
            eprintln!("error: cannot write {path:?}: {e}");
            return ExitCode::FAILURE;
        }
        println!("chart written to {}", path.display());
    }
    ExitCode::SUCCESS
}

fn print_status(v: &serde_json::Value, duplicate: bool) -> ExitCode {
    let id = v["video_id"].as_str().unwrap_or("?");
    let state = v["state"].as_str().unwrap_or("?");
    let mut line = format!("{id} {state}");
    if duplicate {
        line.push_str(" (already uploaded: no new processing)");
    }
    if let Some(p) = v["progress"].as_f64().filter(|_| state == "processing") {
        line.push_str(&format!(" {:.0}%", p * 100.0));
    }
    if let Some(e) = v["error"].as_str() {
        line.push_str(&format!(": {e}"));
    }
    if let Some(p) = v["playlist"].as_str() {
        line.push_str(&format!(" playlist {p}"));
    }
    println!("{line}");
    if state == "failed" {
        // On stderr: the last line of stdout stays the id and the state, for scripts.
        eprintln!(
            "a failure on the server's side (ffmpeg, the object store) is retried once it is \
             fixed with: reel reprocess {id}"
        );
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
