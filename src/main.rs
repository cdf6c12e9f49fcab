//! The `portcullis` command: `serve`, `check`, `hash-password`, `reload`,
//! `clients`, `consents` and `keys`. All the
//! work is in the library; this file parses arguments and maps failures to
//! exit codes (78, EX_CONFIG, for a bad configuration).

use std::io::Read as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use portcullis::config::Config;
use portcullis::server::Server;
use portcullis::telemetry::logging::LogGuards;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// sysexits.h EX_CONFIG: the configuration is wrong.
const EX_CONFIG: u8 = 78;

#[derive(Parser)]
#[command(name = "portcullis", version, about = "A bearer-token gateway with its own OAuth 2.0 authorization server")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// The configuration file.
        #[arg(long, short, default_value = "config/portcullis.toml")]
        config: PathBuf,
    },
    /// Validate a configuration file and exit (0 when valid).
    Check {
        #[arg(long, short, default_value = "config/portcullis.toml")]
        config: PathBuf,
    },
    /// Read a secret on stdin and print its argon2id PHC string, for
    /// `password_hash` or `client_secret_hash`.
    HashPassword,
    /// Ask the running gateway (through its admin listener) to re-read its
    /// config file; prints why when the new file is refused.
    Reload {
        #[arg(long, short, default_value = "config/portcullis.toml")]
        config: PathBuf,
    },
    /// Register, list, remove clients in the store, or rotate their secrets
    /// (no restart needed).
    Clients {
        #[arg(long, short, default_value = "config/portcullis.toml", global = true)]
        config: PathBuf,
        #[command(subcommand)]
        action: ClientsAction,
    },
    /// List users' consents, or withdraw one (revoking what it granted).
    Consents {
        #[arg(long, short, default_value = "config/portcullis.toml", global = true)]
        config: PathBuf,
        #[command(subcommand)]
        action: ConsentsAction,
    },
    /// List the token-signing keys, or rotate in a new one.
    Keys {
        #[arg(long, short, default_value = "config/portcullis.toml", global = true)]
        config: PathBuf,
        #[command(subcommand)]
        action: KeysAction,
    },
}

#[derive(Subcommand)]
enum KeysAction {
    /// The keys, with when each was created, when it signs from, and its
    /// state (pending, active, retired, expired).
    List,
    /// Add the next key: published at once, signing after --activate-in;
    /// the key it replaces stays published until its tokens have expired.
    Rotate {
        /// How long the new key is published before it signs (default 6m):
        /// at least the JWKS cache lifetime of every relying party (ours
        /// says 5 minutes), plus a minute for gateways on SQLite to read it.
        #[arg(long, value_parser = humantime::parse_duration)]
        activate_in: Option<std::time::Duration>,
    },
}

#[derive(Subcommand)]
enum ClientsAction {
    /// Register a client; its secret is printed once.
    Add {
        client_id: String,
        #[arg(long)]
        name: Option<String>,
        /// An exact redirect URI (repeat for several).
        #[arg(long = "redirect-uri")]
        redirect_uris: Vec<String>,
        /// A scope the client may be granted (repeat for several).
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// A grant type (repeat; default: authorization_code and refresh_token).
        #[arg(long = "grant-type")]
        grant_types: Vec<String>,
        /// A client without a secret (browser or native app); PKCE required.
        #[arg(long)]
        public: bool,
        /// Do not require PKCE (confidential clients only).
        #[arg(long)]
        no_pkce: bool,
    },
    /// List clients from the config file and the store.
    List,
    /// Remove a client registered in the store.
    Remove { client_id: String },
    /// Give a client a new secret (printed once); the old one stops working.
    RotateSecret { client_id: String },
}

#[derive(Subcommand)]
enum ConsentsAction {
    /// List consents, of every user or of one.
    List {
        #[arg(long)]
        user: Option<String>,
    },
    /// Withdraw a user's consent for a client, revoking its tokens.
    Revoke {
        #[arg(long)]
        user: String,
        #[arg(long)]
        client: String,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Serve { config } => serve(config),
        Command::Check { config } => match Config::load(&config) {
            Ok(c) => {
                println!(
                    "{}: ok ({} routes, {} clients, {} users)",
                    config.display(),
                    c.routes.len(),
                    c.clients.len(),
                    c.users.len()
                );
                for note in c.route_notes() {
                    println!("note: {note}");
                }
                for warning in c.warnings() {
                    println!("warning: {warning}");
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(EX_CONFIG)
            }
        },
        Command::HashPassword => hash_password(),
        Command::Reload { config } => reload(&config),
        Command::Clients { config, action } => manage(&config, |cfg, store| async move {
            use portcullis::oauth::manage::*;
            match action {
                ClientsAction::Add { client_id, name, redirect_uris, scopes, grant_types, public, no_pkce } => {
                    let new = NewClient { client_id, name, redirect_uris, scopes, grant_types, public, no_pkce };
                    add_client(&cfg, &*store, new).await
                }
                ClientsAction::List => list_clients(&cfg, &*store).await,
                ClientsAction::Remove { client_id } => remove_client(&cfg, &*store, &client_id).await,
                ClientsAction::RotateSecret { client_id } => rotate_secret(&cfg, &*store, &client_id).await,
            }
        }),
        Command::Consents { config, action } => manage(&config, |_cfg, store| async move {
            use portcullis::oauth::manage::*;
            match action {
                ConsentsAction::List { user } => list_consents(&*store, user.as_deref()).await,
                ConsentsAction::Revoke { user, client } => revoke_consent(&*store, &user, &client).await,
            }
        }),
        Command::Keys { config, action } => manage(&config, |cfg, store| async move {
            use portcullis::oauth::manage::*;
            match action {
                KeysAction::List => list_keys(&cfg, &*store).await,
                KeysAction::Rotate { activate_in } => rotate_keys(&cfg, &*store, activate_in).await,
            }
        }),
    }
}

/// `POST /reload` on the admin listener named in the config file.
fn reload(path: &std::path::Path) -> ExitCode {
    use http_body_util::BodyExt as _;
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EX_CONFIG);
        }
    };
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
        return ExitCode::FAILURE;
    };
    let url = format!("http://{}/reload", config.admin.listen);
    let result = runtime.block_on(async {
        let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http::<http_body_util::Empty<bytes::Bytes>>();
        let req = http::Request::post(&url).body(http_body_util::Empty::new()).map_err(|e| e.to_string())?;
        let res = client.request(req).await.map_err(|e| format!("cannot reach {url}: {e}"))?;
        let status = res.status();
        let body = res.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok::<_, String>((status, String::from_utf8_lossy(&body).into_owned()))
    });
    match result {
        Ok((status, body)) if status.is_success() => {
            print!("{body}");
            ExitCode::SUCCESS
        }
        Ok((_, body)) => {
            eprint!("{body}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("portcullis: {e}");
            ExitCode::FAILURE
        }
    }
}

/// What `serve` and the store-changing commands start from: the validated
/// config, the logs (the main log only for `serve`; the others keep their
/// output to what they print, and audit what they change) and a
/// current-thread runtime. A failure is printed here, and its exit code
/// returned: 78 for a bad config, 1 otherwise.
fn start(path: &std::path::Path, main_log: bool) -> Result<(Config, LogGuards, tokio::runtime::Runtime), ExitCode> {
    let config = Config::load(path).map_err(|e| {
        eprintln!("{e}");
        ExitCode::from(EX_CONFIG)
    })?;
    let guards = portcullis::telemetry::logging::init(&config.log, main_log).map_err(|e| {
        eprintln!("portcullis: {e}");
        ExitCode::FAILURE
    })?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| {
        eprintln!("cannot start the runtime: {e}");
        ExitCode::FAILURE
    })?;
    Ok((config, guards, runtime))
}

/// Runs a store-changing command: load the config, open its store, print
/// what the command says. Exit 78 for a bad config, 1 for a refused command.
fn manage<F, Fut>(path: &std::path::Path, command: F) -> ExitCode
where
    F: FnOnce(Config, std::sync::Arc<dyn portcullis::store::Store>) -> Fut,
    Fut: std::future::Future<Output = Result<String, portcullis::oauth::manage::ManageError>>,
{
    let (config, _audit_writer, runtime) = match start(path, false) {
        Ok(started) => started,
        Err(code) => return code,
    };
    let result = runtime.block_on(async {
        let store = portcullis::oauth::manage::open_store(&config).await?;
        command(config, store).await
    });
    match result {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("portcullis: {e}");
            ExitCode::FAILURE
        }
    }
}

fn hash_password() -> ExitCode {
    let mut input = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut input) {
        eprintln!("cannot read stdin: {e}");
        return ExitCode::FAILURE;
    }
    let secret = input.strip_suffix('\n').map(|s| s.strip_suffix('\r').unwrap_or(s)).unwrap_or(&input);
    if secret.is_empty() {
        eprintln!("the secret on stdin is empty");
        return ExitCode::FAILURE;
    }
    match portcullis::oauth::clients::hash_secret(secret) {
        Ok(phc) => {
            println!("{phc}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("hashing failed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(path: PathBuf) -> ExitCode {
    // The main thread runs the admin listener, reloads and housekeeping;
    // `Server::run` starts a thread per public worker.
    let (config, _log_writer, runtime) = match start(&path, true) {
        Ok(started) => started,
        Err(code) => return code,
    };
    runtime.block_on(async {
        let server = match Server::start(config).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot start");
                eprintln!("portcullis: {e}");
                return ExitCode::FAILURE;
            }
        };
        server.reload_from(path);
        // The first signal stops; a second one cuts `shutdown_delay` short.
        let (signals_tx, signals) = tokio::sync::watch::channel(0u32);
        tokio::spawn(async move {
            loop {
                shutdown_signal().await;
                signals_tx.send_modify(|n| *n += 1);
            }
        });
        let nth = |n: u32| {
            let mut signals = signals.clone();
            async move {
                let _ = signals.wait_for(|&seen| seen >= n).await;
            }
        };
        server.run_until(nth(1), nth(2)).await;
        ExitCode::SUCCESS
    })
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
