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
        #[arg(long, default_value = "./reel-data")]
        data_dir: PathBuf,
        /// HTTP listen address. Loopback unless you choose otherwise.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Read settings from a cluster.toml instead (then --data-dir and --listen come from it
        /// unless given explicitly).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Which [[node]] of the config file this is.
        #[arg(long)]
        node: Option<String>,
        /// Log as JSON lines.
        #[arg(long)]
        json_logs: bool,
    },
    /// Upload a video file and print its id.
    Upload {
        /// The file.
        file: PathBuf,
        /// Server URL.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        server: String,
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
    /// Show a video's state.
    Status {
        /// The video id.
        video_id: String,
        /// Server URL.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        server: String,
        /// Wait until the video is ready or failed, showing progress.
        #[arg(long)]
        wait: bool,
    },
}

fn init_logs(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,ractor=warn"));
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

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve {
            data_dir,
            listen,
            config,
            node,
            json_logs,
        } => {
            init_logs(json_logs);
            let config = match config {
                Some(path) => match reel::config::Config::from_file(&path, node.as_deref()) {
                    Ok(c) => c,
                    Err(e) => {
                        eprintln!("error: {e}");
                        return ExitCode::from(2);
                    }
                },
                None => reel::config::Config::single_node(data_dir, listen),
            };
            match reel::run(config, shutdown_signal()).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Upload { file, server, wait } => {
            let v = match reel::client::upload(&server, &file).await {
                Ok(v) => v,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let id = v["video_id"].as_str().unwrap_or("").to_string();
            let v = if wait {
                match reel::client::status(&server, &id, Some(Duration::from_secs(24 * 3600))).await
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
        Command::Status {
            video_id,
            server,
            wait,
        } => {
            let wait = wait.then(|| Duration::from_secs(24 * 3600));
            match reel::client::status(&server, &video_id, wait).await {
                Ok(v) => print_status(&v, false),
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn session_timeline(
    session_id: &str,
    data_dirs: &[PathBuf],
    svg: Option<&std::path::Path>,
) -> ExitCode {
    let t = match reel::streaming::timeline::Timeline::load(data_dirs, session_id) {
        Ok(t) => t,
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
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
