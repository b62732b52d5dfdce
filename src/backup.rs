//! `parallax backup` and `parallax restore`: a region's store to a file
//! while the region serves, and from a file into a data directory (the
//! region stopped). See `parallax_replicator::store::restore` for why a
//! restored region's log restarts past every sequence it handed out.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use parallax_core::clock::{Clock, SystemClock};
use parallax_core::config::Config;
use parallax_replicator::store::{self, RestorePlan, Store};

use crate::client::RegionTarget;
use crate::region::RegionOnDisk;

/// Arguments of `parallax backup`.
#[derive(Debug, Args)]
pub(crate) struct BackupArgs {
    #[command(flatten)]
    pub(crate) target: RegionTarget,
    /// The file to write (first as `<out>.part`, renamed once whole and checked).
    #[arg(long)]
    pub(crate) out: PathBuf,
}

/// Arguments of `parallax restore`: the region whose store to build (it
/// must be stopped; a backup of another region seeds a new one).
#[derive(Debug, Args)]
pub(crate) struct RestoreArgs {
    #[command(flatten)]
    pub(crate) on_disk: RegionOnDisk,
    /// The backup file `parallax backup` wrote.
    #[arg(long)]
    pub(crate) from: PathBuf,
    /// Move the region's store and write-ahead log aside (to
    /// `*.before-restore-<unix time>`) instead of refusing to replace them.
    #[arg(long)]
    pub(crate) force: bool,
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(suffix);
    PathBuf::from(name)
}

fn sync_dir_of(path: &Path) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot sync the directory {}", dir.display()))
}

/// `parallax backup`: exit 0 with the file written, 2 on error.
pub(crate) async fn backup(a: BackupArgs) -> Result<ExitCode> {
    let client = a.target.client()?;
    let part = with_suffix(&a.out, ".part");
    let mut file =
        File::create(&part).with_context(|| format!("cannot create {}", part.display()))?;
    let started = Instant::now();
    let written = client.backup(&mut file).await;
    let checked = written.map_err(anyhow::Error::from).and_then(|bytes| {
        file.sync_all()
            .with_context(|| format!("cannot sync {}", part.display()))?;
        let summary = store::verify(File::open(&part)?)?;
        Ok((bytes, summary))
    });
    let (bytes, summary) = match checked {
        Ok(done) => done,
        Err(e) => {
            let _ = std::fs::remove_file(&part);
            return Err(e.context(format!("the backup of {} failed", client.region())));
        }
    };
    std::fs::rename(&part, &a.out)
        .with_context(|| format!("cannot rename {} to {}", part.display(), a.out.display()))?;
    sync_dir_of(&a.out)?;
    println!(
        "backup of {}: {} entities, {} bytes, in {:.1} s (snapshot at {}) -> {}",
        summary.header.region,
        summary.entities,
        bytes,
        started.elapsed().as_secs_f64(),
        parallax_web::time::rfc3339(summary.header.taken_at_us as i64),
        a.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// `parallax restore`: exit 0 with the store built, 2 on error.
pub(crate) async fn restore(args: RestoreArgs) -> Result<ExitCode> {
    let a = &args.on_disk;
    let config = Config::load(&a.config)?;
    if !config.regions.contains_key(&a.region) {
        bail!(
            "region `{}` is not declared in {} (declared: {}). Fix: pass --region with one of those",
            a.region,
            a.config.display(),
            config.region_names().join(", ")
        );
    }
    let store_path = a.data_dir.join(format!("{}.redb", a.region));
    let wal_path = a.data_dir.join(format!("{}.wal", a.region));
    let present: Vec<&PathBuf> = [&store_path, &wal_path]
        .into_iter()
        .filter(|p| p.exists())
        .collect();
    if !present.is_empty() {
        if !args.force {
            bail!(
                "{} already holds {}'s store. Fix: stop the region and pass --force (it moves them aside, deleting nothing), or restore into an empty --data-dir",
                a.data_dir.display(),
                a.region
            );
        }
        if store_path.exists() {
            // Opening it fails while the region runs (the store is locked).
            drop(Store::open(&store_path).with_context(|| {
                format!("{}'s store is in use. Fix: stop the region first", a.region)
            })?);
        }
        let suffix = format!(".before-restore-{}", SystemClock.now_us() / 1_000_000);
        for p in present {
            let aside = with_suffix(p, &suffix);
            std::fs::rename(p, &aside).with_context(|| {
                format!("cannot move {} aside to {}", p.display(), aside.display())
            })?;
            println!("moved {} aside to {}", p.display(), aside.display());
        }
    }
    std::fs::create_dir_all(&a.data_dir)
        .with_context(|| format!("cannot create {}", a.data_dir.display()))?;
    let input =
        File::open(&args.from).with_context(|| format!("cannot open {}", args.from.display()))?;
    let plan = RestorePlan {
        region: a.region.clone(),
        peers: config
            .region_names()
            .into_iter()
            .filter(|r| *r != a.region)
            .collect(),
        log_floor: SystemClock.now_us(),
    };
    let summary = store::restore(input, &store_path, &plan)
        .with_context(|| format!("cannot restore {}", args.from.display()))?;
    sync_dir_of(&store_path)?;
    let seeded = if summary.header.region == a.region {
        String::new()
    } else {
        format!(" (seeded from {}'s)", summary.header.region)
    };
    println!(
        "restored {}'s store{seeded} from {} (snapshot at {}): {} entities. Its log restarts past sequence {}; when it starts it runs anti-entropy with {}, which brings back what the backup missed.",
        a.region,
        args.from.display(),
        parallax_web::time::rfc3339(summary.header.taken_at_us as i64),
        summary.entities,
        plan.log_floor,
        plan.peers.join(" and ")
    );
    Ok(ExitCode::SUCCESS)
}
