//! `paloma-sim`: watch a simulated chaos run of the Raft cluster, sweep seeds, replay a failure.
//!
//! ```text
//! paloma-sim watch [--seed N] [--family chaos5|chaos3|membership|transfer|lease|lease-attack|membership4] [--trace]
//!                                                   one run told as a story (--trace: every message)
//! paloma-sim sweep [--seeds N] [--first S] [--family F] [--no-shrink]
//!                                                   N seeds, ends with "N passed, M failed"
//! paloma-sim replay --seed S [--faults 1,4] [--family F]   re-run a seed (with a shrunk fault mask)
//! paloma-sim dir [--seed N | --seeds N --first S --jobs J] [--quiet]
//!                                                   the directory family: replicas, clients, attacker
//! ```

use clap::{Parser, Subcommand};
use paloma_scenarios::fastsim::SimConfig;
use paloma_scenarios::sweep::{replay_command, run_one, shrink, sweep, Family};
use std::collections::BTreeSet;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "paloma-sim",
    about = "Deterministic chaos simulation of Paloma's Raft cluster"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run one seed and print its trace and what was checked.
    Watch {
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long, default_value = "chaos5")]
        family: String,
        /// Print only the summary, not the story.
        #[arg(long)]
        quiet: bool,
        /// Also print every message sent and every role change (thousands of lines).
        #[arg(long)]
        trace: bool,
    },
    /// Run many seeds; failures are shrunk and printed with their replay command.
    Sweep {
        #[arg(long, default_value_t = 1000)]
        seeds: u64,
        #[arg(long, default_value_t = 1)]
        first: u64,
        #[arg(long, default_value = "chaos5")]
        family: String,
        /// Threads (seeds are independent, results do not depend on this).
        #[arg(long, default_value_t = 1)]
        jobs: usize,
        /// Do not shrink failures (mutation campaigns: only the counts matter).
        #[arg(long)]
        no_shrink: bool,
    },
    /// The directory family: replicas, many clients and an attacker under swarm-drawn faults.
    /// With `--seeds`, a sweep; otherwise one seed told as a story.
    Dir {
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Sweep this many seeds from `--first` instead.
        #[arg(long)]
        seeds: Option<u64>,
        #[arg(long, default_value_t = 1)]
        first: u64,
        #[arg(long, default_value_t = 1)]
        jobs: usize,
        /// Print only the summary.
        #[arg(long)]
        quiet: bool,
    },
    /// Replay one seed, optionally with only some of its planned faults.
    Replay {
        #[arg(long)]
        seed: u64,
        #[arg(long, default_value = "chaos5")]
        family: String,
        /// Comma-separated indexes of the planned faults to keep.
        #[arg(long)]
        faults: Option<String>,
        /// Print only the story, not every message.
        #[arg(long)]
        story: bool,
    },
}

fn family(name: &str) -> Result<Family, String> {
    Family::parse(name).ok_or_else(|| {
        format!("unknown family {name:?} (expected chaos5, chaos3, membership, transfer, lease, lease-attack or membership4)")
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd.unwrap_or(Cmd::Watch {
        seed: 1,
        family: "chaos5".into(),
        quiet: false,
        trace: false,
    }) {
        Cmd::Watch {
            seed,
            family: f,
            quiet,
            trace,
        } => family(&f).map(|f| watch(f, seed, None, quiet, trace)),
        Cmd::Replay {
            seed,
            family: f,
            faults,
            story,
        } => family(&f).and_then(|f| {
            let mask = faults
                .map(|s| {
                    s.split(',')
                        .filter(|x| !x.is_empty())
                        .map(|x| {
                            x.trim()
                                .parse::<usize>()
                                .map_err(|e| format!("bad fault index {x:?}: {e}"))
                        })
                        .collect::<Result<BTreeSet<_>, _>>()
                })
                .transpose()?;
            Ok(watch(f, seed, mask, false, !story))
        }),
        Cmd::Sweep {
            seeds,
            first,
            family: f,
            jobs,
            no_shrink,
        } => family(&f).map(|f| run_sweep(f, first, seeds, jobs, !no_shrink)),
        Cmd::Dir {
            seed,
            seeds,
            first,
            jobs,
            quiet,
        } => Ok(match seeds {
            Some(count) => dir_sweep(first, count, jobs),
            None => dir_watch(seed, quiet),
        }),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("paloma-sim: {e}");
            ExitCode::from(2)
        }
    }
}

fn watch(
    family: Family,
    seed: u64,
    mask: Option<BTreeSet<usize>>,
    quiet: bool,
    messages: bool,
) -> bool {
    let cfg = SimConfig {
        trace: !quiet,
        trace_messages: messages,
        fault_mask: mask.clone(),
        ..family.config(seed)
    };
    let resolved = cfg.resolved();
    println!(
        "Simulating {} nodes ({} family, seed {seed}) for {:?} of chaos, then {:?} with the network healed.",
        cfg.nodes + cfg.spares,
        family.name(),
        cfg.chaos,
        cfg.liveness
    );
    println!(
        "This seed's fault profile: {}",
        resolved.faults.describe(&resolved.raft)
    );
    let (report, trace) = run_one(cfg);
    for line in trace.lines() {
        println!("{line}");
    }
    println!();
    println!("Checked after every step: one leader per term, committed entries never change, leaders hold every committed entry,");
    println!("equal state at equal applied index, node invariants, durable term/vote never regress. Checked at the boundary,");
    println!("against the disks: no message leaves before the term, vote or entries it promises are durable, no node votes twice");
    println!("in a term, every commit is durable on a quorum. At the end: one leader, progress after healing, every membership");
    println!("change and transfer took effect or failed explicitly, and the client history is linearizable.");
    println!("{}", report.summary());
    if report.failure.is_some() {
        println!("replay: {}", replay_command(family, seed, mask.as_ref()));
        return false;
    }
    true
}

fn run_sweep(family: Family, first: u64, count: u64, jobs: usize, shrinking: bool) -> bool {
    #[allow(clippy::disallowed_methods)] // wall time only for the progress display
    let start = std::time::Instant::now();
    let done = std::sync::atomic::AtomicU64::new(0);
    let result = sweep(family, first, count, jobs, |_, report| {
        if report.failure.is_some() {
            println!("FAIL {}", report.summary());
        }
        let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        if n % 1000 == 0 {
            eprintln!("{n}/{count} seeds, {:.1}s", start.elapsed().as_secs_f64());
        }
    });
    let wall = start.elapsed().as_secs_f64();
    for report in result.failed.iter().filter(|_| shrinking) {
        let mask = shrink(family, report.seed);
        println!(
            "seed {} shrunk to faults {:?}; replay: {}",
            report.seed,
            mask,
            replay_command(family, report.seed, Some(&mask))
        );
    }
    println!(
        "{} seeds of {} in {:.1}s wall, {:.0} simulated seconds ({:.0}x real time)",
        count,
        family.name(),
        wall,
        result.simulated_secs,
        result.simulated_secs / wall.max(1e-9)
    );
    println!("{} passed, {} failed", result.passed, result.failed.len());
    result.failed.is_empty()
}

fn dir_watch(seed: u64, quiet: bool) -> bool {
    use paloma_scenarios::dirsim::{self, DirConfig};
    let cfg = DirConfig {
        trace: !quiet,
        ..DirConfig::new(seed)
    };
    println!(
        "Simulating {} replicas and {} clients (directory family, seed {seed}) for {:?} of chaos, then {:?} healed.",
        cfg.replicas, cfg.clients, cfg.chaos, cfg.liveness
    );
    #[allow(clippy::disallowed_methods)] // wall time only for the display
    let start = std::time::Instant::now();
    let (report, trace) = dirsim::run(cfg);
    for line in trace.lines() {
        println!("{line}");
    }
    println!("profile: {}", report.profile);
    println!("{}", report.summary());
    println!("({:.2}s wall)", start.elapsed().as_secs_f64());
    if report.failure.is_some() {
        println!("replay: {}", dirsim::replay_command(seed));
        return false;
    }
    true
}

fn dir_sweep(first: u64, count: u64, jobs: usize) -> bool {
    use paloma_scenarios::dirsim;
    #[allow(clippy::disallowed_methods)] // wall time only for the display
    let start = std::time::Instant::now();
    let reports = dirsim::sweep(first, count, jobs);
    let wall = start.elapsed().as_secs_f64();
    let simulated: f64 = reports.iter().map(|r| r.sim_time.as_secs_f64()).sum();
    let mut failed = 0;
    for r in reports.iter().filter(|r| r.failure.is_some()) {
        failed += 1;
        println!(
            "FAIL {}\n  replay: {}",
            r.summary(),
            dirsim::replay_command(r.seed)
        );
    }
    println!(
        "{count} seeds of directory in {wall:.1}s wall, {simulated:.0} simulated seconds ({:.0}x real time)",
        simulated / wall.max(1e-9)
    );
    println!("{} passed, {failed} failed", reports.len() - failed);
    let m = reports.iter().fold([0u64; 10], |mut a, r| {
        let m = &r.observed.mailbox;
        for (x, y) in a.iter_mut().zip([
            m.sent,
            m.acked,
            m.fetched,
            m.excused,
            m.full,
            m.fetches,
            m.acks,
            m.pushes,
            m.stored_copies,
            m.resent,
        ]) {
            *x += y;
        }
        a
    });
    println!(
        "mailboxes: {} deposits, {} acknowledged, {} delivered and checked, {} excused (deregistered or expired), {} MailboxFull, {} fetches, {} acknowledgements, {} pushes, {} stored copies verified, {} resent under the same id",
        m[0], m[1], m[2], m[3], m[4], m[5], m[6], m[7], m[8], m[9]
    );
    failed == 0
}
