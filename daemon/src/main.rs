//! The `marketlane` binary: the daemon (`run`), the schema tools (`schema ddl|check`), the
//! reconciliation and the end-to-end demo. The IB gateway simulator is its own binary,
//! `marketlane-sim` (simulator crate), so that this one does not carry it.

mod allocator;
mod config;
mod control;
mod ctl;
mod demo;
mod http;
mod login;
mod reconcile;
mod redis_acl;
mod replay;
mod run;
mod schema_cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use crate::config::Config;

#[derive(Parser)]
#[command(
    name = "marketlane",
    version,
    about = "IB Client Portal → Kafka → ClickHouse and Redis"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon.
    Run {
        /// TOML config file; environment variables MARKETLANE__SECTION__KEY override it.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Append every raw websocket frame with its receive time to FILE (for `replay`).
        #[arg(long, value_name = "FILE")]
        record: Option<PathBuf>,
    },
    #[command(flatten)]
    Tool(ToolCommand),
}

/// Every command but `run`: they run on a runtime of tokio's default size.
#[derive(Subcommand)]
enum ToolCommand {
    /// Feed recorded or hand-written websocket frames through the normalizers; print the rows.
    Replay(replay::ReplayArgs),
    /// Moved: the IB gateway simulator is the `marketlane-sim` binary (says where it is).
    #[command(hide = true)]
    Sim {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
        args: Vec<String>,
    },
    /// Category schema tools.
    Schema {
        #[command(subcommand)]
        command: SchemaCommand,
    },
    /// Compare a simulator ledger with Kafka and ClickHouse by row id.
    Reconcile {
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[arg(long)]
        ledger: PathBuf,
    },
    /// The whole lane end to end against the simulator, with a reconciliation at the end.
    Demo(demo::DemoArgs),
    /// Print (or apply) the Redis ACL users of the calculator config.
    RedisAcl(redis_acl::RedisAclArgs),
    /// Talk to a running daemon over its control socket.
    Ctl(ctl::CtlArgs),
    /// Log the IB gateway in unattended (headless Chromium on its SSO page).
    Login(login::LoginArgs),
}

#[derive(Subcommand)]
enum SchemaCommand {
    /// Print the ClickHouse DDL derived from the schema files.
    Ddl {
        #[arg(long, default_value = "schemas")]
        dir: PathBuf,
        /// The ClickHouse version to generate for (18.16.1 is Debian's; production is current).
        #[arg(long, default_value = "25.8.1")]
        server_version: String,
        #[arg(long, default_value = "marketlane")]
        database: String,
        /// Days of TTL (1–3650, like `clickhouse.retention_days`).
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=3650))]
        retention_days: u32,
    },
    /// Validate a directory of schema files.
    Check { dir: PathBuf },
}

fn init_tracing(level: &str, json: bool) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a person at a terminal: log files and collectors get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// See the workspace manifest: the hot path allocates per frame and per row on every thread.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    allocator::tune();
    // ractor_cluster pulls aws-lc; one process-wide rustls provider avoids ambiguity.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cli = Cli::parse();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    // `run` loads its config first: the runtime's size is part of it.
    let command = match cli.command {
        Command::Run { config, record } => {
            let mut config = match Config::load(config.as_deref(), std::env::vars()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    return ExitCode::FAILURE;
                }
            };
            if record.is_some() {
                config.ib.record_path = record;
            }
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
            builder.worker_threads(config.runtime.workers(config.roles.len(), cpus));
            Dispatch::Run(Box::new(config))
        }
        Command::Tool(tool) => Dispatch::Tool(Box::new(tool)),
    };
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = match command {
        Dispatch::Run(config) => runtime.block_on(async {
            let log = control::LogControl::init(&config.log.level, config.log.json);
            run::run(*config, log).await?;
            Ok(ExitCode::SUCCESS)
        }),
        Dispatch::Tool(command) => runtime.block_on(dispatch(*command)),
    };
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A command, with `run`'s config already loaded.
enum Dispatch {
    Run(Box<Config>),
    Tool(Box<ToolCommand>),
}

async fn dispatch(command: ToolCommand) -> anyhow::Result<ExitCode> {
    match command {
        ToolCommand::Sim { args } => {
            let sim = demo::sim_bin_path()?;
            eprintln!(
                "error: the simulator is its own binary now: {} {}\n(build it with `cargo build --bin marketlane-sim`)",
                sim.display(),
                args.join(" ")
            );
            return Ok(ExitCode::from(2));
        }
        ToolCommand::Schema { command } => match command {
            SchemaCommand::Ddl {
                dir,
                server_version,
                database,
                retention_days,
            } => print!(
                "{}",
                schema_cmd::ddl(&dir, &server_version, &database, retention_days)?
            ),
            SchemaCommand::Check { dir } => print!("{}", schema_cmd::check(&dir)?),
        },
        ToolCommand::Reconcile { config, ledger } => {
            let config = Config::load(config.as_deref(), std::env::vars())?;
            let r = reconcile::reconcile(&config, &ledger, None).await?;
            println!("{r}");
            if r.lost > 0 || r.duplicates > 0 {
                return Ok(ExitCode::FAILURE);
            }
        }
        ToolCommand::Replay(args) => replay::replay(args).await?,
        ToolCommand::Ctl(args) => return Ok(ctl::run(args).await),
        ToolCommand::Login(args) => {
            init_tracing("info", false);
            return login::run(args).await;
        }
        ToolCommand::RedisAcl(args) => redis_acl::run(args).await?,
        ToolCommand::Demo(args) => {
            if !demo::demo(args).await?.ok() {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
