//! `marketlane redis-acl [--apply]`: the Redis ACL users derived from `[calculators]` (the
//! daemon's writer user and one read-only user per team), printed as `ACL SETUSER` lines that
//! `redis-cli` accepts, or applied through an administrative connection.

use std::path::PathBuf;

use anyhow::Context;
use marketlane_actors::calculator::acl;

use crate::config::Config;

#[derive(clap::Args)]
pub struct RedisAclArgs {
    /// TOML config file; environment variables MARKETLANE__SECTION__KEY override it.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Apply the rules instead of printing them.
    #[arg(long)]
    apply: bool,
    /// Connection with ACL rights used by --apply.
    #[arg(
        long,
        env = "MARKETLANE_REDIS_ADMIN_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    admin_url: String,
}

pub async fn run(args: RedisAclArgs) -> anyhow::Result<()> {
    let config = Config::load(args.config.as_deref(), std::env::vars())?;
    let users = acl::users(&config.calculators)?;
    if args.apply {
        acl::apply(&args.admin_url, &users)
            .await
            .context("cannot apply the ACL rules")?;
        for u in &users {
            println!("applied: {}", u.name);
        }
    } else {
        for u in &users {
            println!("{u}");
        }
    }
    Ok(())
}
