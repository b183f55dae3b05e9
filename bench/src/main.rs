//! `corebus-bench`: run one benchmark against corebus, NATS or Redis, or
//! summarize a comparison run. See `docs/benchmarks.md`.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use corebus_bench::summary::{self, Summary};
use corebus_bench::RunOptions;

#[derive(Debug, Parser)]
#[command(
    name = "corebus-bench",
    about = "Load corebus, NATS or Redis pub/sub with the same workloads and check every delivery",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunOptions,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Turn reports (one JSON object per line) into results JSON, Markdown and SVG.
    Summarize {
        /// Reports as printed by `--json`, one per line.
        #[arg(long)]
        input: String,
        /// Where to write the results file (JSON).
        #[arg(long)]
        json: String,
        /// Where to write the Markdown table.
        #[arg(long)]
        markdown: String,
        /// Where to write the SVG picture.
        #[arg(long)]
        svg: String,
        /// Extra machine facts, `key=value` (versions, shard count).
        #[arg(long = "fact", value_name = "KEY=VALUE")]
        facts: Vec<String>,
        /// Timestamp to print (default: now, from the system clock).
        #[arg(long)]
        generated: Option<String>,
    },
    /// The same MQTT 3.1.1 load against any MQTT broker (corebus's MQTT
    /// listener, Mosquitto, nats-server's): one JSON line. Exit status 2
    /// when messages were lost. See bench/compare_mqtt.sh.
    Mqtt(corebus_bench::mqtt::MqttOptions),
    /// Memory bounds under hostile and slow peers (corebus only; see
    /// bench/bounds.sh). Exit status 2 when a bound is not met.
    Bounds {
        /// The broker, host:port on loopback.
        #[arg(long, default_value = "127.0.0.1:7400")]
        server: String,
        /// The broker's process id, to read its memory.
        #[arg(long)]
        broker_pid: u32,
        #[command(subcommand)]
        scenario: BoundsScenario,
    },
}

#[derive(Debug, Subcommand)]
enum BoundsScenario {
    /// Connections that send only a first-frame length prefix.
    Prefix {
        /// Connections to open.
        #[arg(long, default_value_t = 2000)]
        connections: usize,
        /// The length each announces.
        #[arg(long, default_value_t = corebus_net::DEFAULT_MAX_FRAME)]
        announce: u32,
        /// Most the broker's RSS may grow, MiB.
        #[arg(long, default_value_t = 64)]
        max_growth_mib: u64,
    },
    /// One stalled and one healthy subscriber per topic, publishers at the
    /// healthy subscribers' pace.
    Stalled {
        /// Topics.
        #[arg(long, default_value_t = 64)]
        topics: usize,
        /// Publisher connections (each writes to every topic in turn).
        #[arg(long, default_value_t = 4)]
        publishers: usize,
        /// Payload bytes.
        #[arg(long, default_value_t = 600)]
        payload: usize,
        /// Seconds of publishing.
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        /// The broker's --outbox-limit, bytes.
        #[arg(long, default_value_t = 8 << 20)]
        outbox_limit: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Summarize {
            input,
            json,
            markdown,
            svg,
            facts,
            generated,
        }) => summarize(&input, &json, &markdown, &svg, &facts, generated),
        Some(Command::Bounds {
            server,
            broker_pid,
            scenario,
        }) => bounds(&server, broker_pid, scenario),
        Some(Command::Mqtt(options)) => mqtt(options),
        None => run(&cli.run),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("corebus-bench: error: {err:#}");
            ExitCode::from(1)
        }
    }
}

/// Runs one MQTT benchmark.
fn mqtt(options: corebus_bench::mqtt::MqttOptions) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    let complete = runtime.block_on(corebus_bench::mqtt::run(options))?;
    runtime.shutdown_background();
    Ok(if complete {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

/// Runs one bounds scenario and prints its report as one JSON line.
fn bounds(server: &str, pid: u32, scenario: BoundsScenario) -> anyhow::Result<ExitCode> {
    use corebus_bench::bounds;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    let met = match scenario {
        BoundsScenario::Prefix {
            connections,
            announce,
            max_growth_mib,
        } => {
            let report = runtime.block_on(bounds::prefix(server, pid, connections, announce))?;
            println!("{}", serde_json::to_string(&report)?);
            report.client_served && report.rss_growth_kib <= max_growth_mib << 10
        }
        BoundsScenario::Stalled {
            topics,
            publishers,
            payload,
            seconds,
            outbox_limit,
        } => {
            let report = runtime.block_on(bounds::stalled(
                server,
                pid,
                topics,
                publishers,
                payload,
                std::time::Duration::from_secs(seconds),
                outbox_limit,
            ))?;
            println!("{}", serde_json::to_string(&report)?);
            report.met()
        }
    };
    Ok(if met {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

/// Exit status 0: everything delivered; 2: the run finished but lost (or
/// disordered) messages; 1: the run could not be done.
fn run(options: &RunOptions) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    let report = runtime.block_on(corebus_bench::run(options))?;
    if options.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", report.table());
    }
    // Dropping the runtime would wait for every connection task; the report
    // is out, so leave without waiting for brokers to say goodbye.
    runtime.shutdown_background();
    Ok(match report.failure() {
        None => ExitCode::SUCCESS,
        Some(why) => {
            eprintln!(
                "corebus-bench: FAILED: {} {}: {why}",
                report.target.name(),
                report.scenario.name()
            );
            ExitCode::from(2)
        }
    })
}

fn summarize(
    input: &str,
    json: &str,
    markdown: &str,
    svg: &str,
    facts: &[String],
    generated: Option<String>,
) -> anyhow::Result<ExitCode> {
    let runs = summary::read_reports(input)?;
    let mut machine = summary::machine_facts();
    for fact in facts {
        let (key, value) = fact
            .split_once('=')
            .with_context(|| format!("--fact {fact:?} is not KEY=VALUE"))?;
        machine.insert(key.to_owned(), value.to_owned());
    }
    let generated = generated.unwrap_or_else(|| {
        let seconds = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        format!("unix time {seconds}")
    });
    let summary = Summary {
        generated,
        machine,
        runs,
    };
    let write = |path: &str, text: String| {
        std::fs::write(path, text).with_context(|| format!("cannot write {path}"))
    };
    write(json, serde_json::to_string_pretty(&summary)? + "\n")?;
    let table = summary::markdown(&summary);
    write(markdown, table.clone())?;
    write(svg, corebus_bench::svg::render(&summary))?;
    print!("{table}");
    Ok(ExitCode::SUCCESS)
}
