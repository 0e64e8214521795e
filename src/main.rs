//! The `resevent` command line: builds the pieces from flags and hands them
//! their I/O. No processing logic lives here.

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use resevent::decode::{Decoder, Format};
use resevent::engine::Engine;
use resevent::pipeline::{Allowlist, Pipeline};
use resevent::replay::{self, Input, ReplayOptions};
use resevent::run::config::{Overrides, RunConfig};
use resevent::state::store::StateStore;

/// mimalloc: the engine allocates many small, short-lived strings per record,
/// and glibc's malloc was a fifth of the core benchmark's profile.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The pipeline file looked for when --pipeline is not given.
const DEFAULT_PIPELINE_PATH: &str = "pipelines/reservations.toml";

#[derive(Parser)]
#[command(
    name = "resevent",
    version,
    about = "Turns MongoDB change events for hotel reservations into business events",
    long_about = "resevent reads MongoDB change events for hotel reservations (as the MongoDB Kafka \
source connector or Debezium's MongoDB connector write them), keeps the latest state of every \
reservation, runs a state-machine table over (previous state, change) and emits business events: \
CHECKED_IN, ROOM_CHANGED, DEPARTURE_CHANGED, CHECKED_OUT, ACCIDENTAL_CHECKOUT, CHECKIN_REVERSED.\n\n\
Start with:\n  resevent replay fixtures/busy-day.jsonl        what would be emitted for these records?\n  \
resevent pipeline show                          the state-machine table in use\n\n\
Logging goes to stderr; set RESEVENT_LOG=debug for more."
)]
struct Cli {
    /// Log lines as text for people (default) or as JSON objects for log pipelines.
    /// Levels come from RESEVENT_LOG (e.g. `info`, `resevent=debug`).
    #[arg(long, global = true, value_enum, env = "RESEVENT_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Replay change events from JSON Lines files (or stdin) and print business events.
    ///
    /// Each input line is one Kafka record value exactly as the connector put it on the
    /// topic (with --keyed: {"key": K, "value": V}, V may be null). Each output line is
    /// one business event as JSON. Rejected lines are reported on stderr with their line
    /// number and reason (and written to --dead-letters if given); the rest goes on.
    ///
    /// Exit status: 0 all lines processed, 1 some lines rejected, 2 could not run.
    #[command(after_help = "Examples:\n  resevent replay fixtures/busy-day.jsonl\n  \
resevent replay --keyed --format debezium fixtures/debezium.keyed.jsonl\n  \
kafka-console-consumer … | resevent replay --allow-properties P-OSL-01 > events.jsonl\n  \
resevent replay --state-dir ./state day1.jsonl && resevent replay --state-dir ./state day2.jsonl")]
    Replay(ReplayArgs),
    /// Write the benchmark's workload: MongoDB connector change events as JSON Lines.
    ///
    /// Deterministic (the same --seed gives the same bytes): every reservation is
    /// inserted, then moves through a stay (check-in, room move, extension, notes,
    /// checkout) one change at a time, ~1 KB each with updateLookup's fullDocument.
    /// scripts/bench loads the broker with it; `resevent replay` reads it as it is.
    #[command(after_help = "Examples:\n  resevent workload --events 1000000 > changes.jsonl\n  \
resevent workload --events 1000 --keyed | resevent replay --keyed")]
    Workload(WorkloadArgs),
    /// Run the service: consume change events from Kafka, emit business events to Kafka.
    ///
    /// Run N instances with the same --application-id: they share the input partitions as
    /// one consumer group. State lives in --state-dir (RocksDB) and in the compacted topic
    /// <application-id>-reservation-state-changelog; a partition that moves to an instance
    /// is restored from the changelog before its records are processed.
    ///
    /// Delivery: at-least-once by default, with deterministic eventIds (consumers drop repeats by eventId);
    /// exactly-once with Kafka transactions under --guarantee exactly-once.
    /// Settings: built-in defaults < --config FILE < RESEVENT_* environment < flags.
    /// SIGTERM or Ctrl-C: finish the batch, commit, leave the group, exit 0.
    #[command(after_help = "Examples:\n  resevent run --bootstrap-servers kafka:9092 --input-topic property.reservation\n  \
RESEVENT_CONSUMER__SESSION_TIMEOUT_MS=6000 resevent run --config resevent.toml\n\n\
Config file (TOML) keys: bootstrap_servers, input_topics, application_id, state_dir, pipeline,\n\
output_topic, format, create_topics, output_retention_ms, output_retention_bytes,\n\
replication_factor, max_batch_records, batch_wait_ms, processing_guarantee, idle_exit_secs,\n\
dead_letter_topic, max_record_bytes, max_nesting_depth, retry_initial_backoff_ms, retry_max_backoff_ms,\n\
retry_max_attempts, state_write_buffer_bytes, output_format; librdkafka settings go in [kafka] (every\n\
client), [consumer] and [producer]; the schema registry in [schema_registry] (url,\n\
basic_auth_user_info, ca_location, auto_register, subject_name_strategy, timeout_ms). Environment: RESEVENT_<KEY>, and RESEVENT_KAFKA__<SETTING>,\n\
RESEVENT_CONSUMER__<SETTING>, RESEVENT_PRODUCER__<SETTING> with dots written as underscores.")]
    Run {
        /// Config file (TOML); see the keys below.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        #[command(flatten)]
        flags: Overrides,
        /// Benchmark baseline: consume and produce the same records unchanged, with the same client settings.
        #[arg(long, hide_short_help = true)]
        passthrough: bool,
    },
    /// Check or print a pipeline file.
    Pipeline {
        #[command(subcommand)]
        command: PipelineCommand,
    },
    /// Dead letters of `resevent run`: list, show, replay into the input, purge what was replayed.
    Dlq(resevent::dlq::DlqArgs),
    /// Print a business topic's events as JSON lines, decoding Avro or JSON (what a consuming team sees).
    ///
    /// Reads by assignment: never joins a consumer group, commits nothing.
    Tail(resevent::tail::TailArgs),
    /// Look into an instance's stored reservation state (read-only; safe beside a running instance).
    State {
        #[command(subcommand)]
        command: StateCommand,
    },
    /// Capture a MongoDB collection's change stream into a Kafka topic, as the MongoDB Kafka connector would.
    ///
    /// Watches the collection with fullDocument=updateLookup and the aggregation pipeline of
    /// pipelines/change-stream.json, and publishes each change as the connector's JSON, keyed
    /// by the document key, so `resevent run` consumes the topic unchanged. The position (the
    /// resume token) is stored in a header of every published record and read back at start:
    /// a restart continues right after the last published change, none lost, none repeated.
    /// One instance writes per collection (a lease in MongoDB); others wait as standbys.
    ///
    /// Exit status: 0 stopped by SIGTERM/Ctrl-C, 3 the stored position cannot be resumed
    /// (resume token no longer in the oplog, or not this deployment's; see --restart-from),
    /// 2 any other failure.
    /// Settings: built-in defaults < --config FILE < RESEVENT_* environment < flags.
    #[command(after_help = "Examples:\n  resevent capture --mongo-uri 'mongodb://db1,db2/?replicaSet=rs0' --database property \\\n    \
--collection reservation --topic property.reservation --bootstrap-servers kafka:9092\n  \
resevent capture --config capture.toml --copy-existing\n\n\
Config file (TOML) keys: mongo_uri, database, collection, topic, partitions, replication_factor,\n\
create_topic, bootstrap_servers, change_stream_pipeline, copy_existing, lease_collection, lease_ms,\n\
json (relaxed|canonical), http_addr; librdkafka settings in [kafka], [consumer], [producer].\n\
Environment: RESEVENT_<KEY>, RESEVENT_KAFKA__<SETTING>, RESEVENT_PRODUCER__<SETTING>.")]
    Capture(CaptureArgs),
}

/// `resevent replay`'s arguments.
#[derive(clap::Args)]
struct ReplayArgs {
    /// Pipeline file (field mapping, statuses, allowlist, table). Default:
    /// pipelines/reservations.toml if present, else the built-in default.
    #[arg(long, value_name = "FILE", env = "RESEVENT_PIPELINE")]
    pipeline: Option<PathBuf>,
    /// Input format; auto recognizes each record's format from its shape.
    #[arg(long, value_enum, default_value_t = Format::Auto)]
    format: Format,
    /// Lines are {"key": K, "value": V} (needed for Debezium deletes, whose id is only in the key).
    #[arg(long)]
    keyed: bool,
    /// Emit events only for these properties (comma-separated, or *); overrides the pipeline's allowlist.
    #[arg(long, value_name = "P1,P2")]
    allow_properties: Option<String>,
    /// Keep state here between runs (RocksDB). Default: a fresh temporary directory.
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Also write each rejected line, with its reason, as JSON Lines to this file.
    #[arg(long, value_name = "FILE")]
    dead_letters: Option<PathBuf>,
    /// After the input, move stream time to this moment (RFC 3339, e.g.
    /// 2026-11-25T00:00:00Z) and fire the pipeline's timers due by then.
    /// Stream time is otherwise the latest event time in the input.
    #[arg(long, value_name = "TIME", value_parser = parse_until)]
    until: Option<i64>,
    /// Why each event fired and why each other change emitted nothing: every
    /// event line gains an "explain" object (the row, file:line, the
    /// transition, the fields that changed); each change without an event gets
    /// a line on stderr with its reason, or, with --explain=json, a
    /// {"noEvent": …} line on stdout.
    #[arg(long, value_name = "FORMAT", num_args = 0..=1, require_equals = true, default_missing_value = "text", value_parser = ["text", "json"])]
    explain: Option<String>,
    /// JSON Lines files of record values; none or "-" reads stdin.
    #[arg(value_name = "FILE")]
    files: Vec<PathBuf>,
}

/// `resevent capture`'s arguments: the config file and the flags over it.
#[derive(clap::Args)]
struct CaptureArgs {
    /// Config file (TOML); see the keys below.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// MongoDB connection string; TLS through its options (tls=true&tlsCAFile=…). Its password is never logged.
    #[arg(long, value_name = "URI")]
    mongo_uri: Option<String>,
    /// Database of the reservations collection.
    #[arg(long, value_name = "DB")]
    database: Option<String>,
    /// The reservations collection.
    #[arg(long, value_name = "COLL")]
    collection: Option<String>,
    /// Topic of change events [default: DB.COLL]; created if missing.
    #[arg(long, value_name = "TOPIC")]
    topic: Option<String>,
    /// Partitions of the topic when it is created [default: the broker's].
    #[arg(long, value_name = "N")]
    partitions: Option<i32>,
    /// Kafka bootstrap servers [default: 127.0.0.1:9092].
    #[arg(long, value_name = "HOST:PORT")]
    bootstrap_servers: Option<String>,
    /// Aggregation pipeline file (JSON array) [default: pipelines/change-stream.json, else built-in].
    #[arg(long, value_name = "FILE")]
    change_stream_pipeline: Option<PathBuf>,
    /// On a topic without a stored position: publish the existing documents as copy-existing events first.
    #[arg(long)]
    copy_existing: bool,
    /// Lease length in ms: a standby takes over this long after the active instance stopped renewing [default: 10000].
    #[arg(long, value_name = "MS")]
    lease_ms: Option<u64>,
    /// Ignore the stored position: `now` follows the stream from now (changes since the position are
    /// not published), `copy` publishes every document again as copy-existing events first.
    #[arg(long, value_enum, value_name = "FROM")]
    restart_from: Option<resevent::capture::RestartFrom>,
    /// Where to serve /healthz, /readyz, /metrics [default: 127.0.0.1:9465; port 0 picks a free one].
    #[arg(long, value_name = "HOST:PORT")]
    http_addr: Option<String>,
    /// Serve no HTTP endpoint.
    #[arg(long, conflicts_with = "http_addr")]
    no_http: bool,
}

/// `resevent workload`: the benchmark's change events, from the generator the
/// core benchmark and the tests use.
#[derive(clap::Args)]
struct WorkloadArgs {
    /// How many change events to write.
    #[arg(long, default_value_t = 200_000)]
    events: u64,
    /// Distinct reservations [default: a quarter of --events, at least 1].
    #[arg(long)]
    reservations: Option<u64>,
    /// The generator's seed; the same seed gives the same events, byte for byte.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Write `{"key": K, "value": V}` lines (K the reservation's ObjectId), as `replay --keyed` reads them.
    #[arg(long)]
    keyed: bool,
}

#[derive(Subcommand)]
enum StateCommand {
    /// One reservation's stored state as JSON (status, room, dates, property, last source position).
    ///
    /// Exit status 0 when found, 1 when no partition holds it.
    Get {
        /// The reservation id, as business events carry it (ObjectId hex, string, number).
        id: String,
        /// The instance's state directory (`state_dir` of `resevent run`).
        #[arg(long, default_value = "resevent-state")]
        state_dir: PathBuf,
    },
    /// Every stored reservation as JSON lines, for audits.
    Dump {
        #[arg(long, default_value = "resevent-state")]
        state_dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum PipelineCommand {
    /// Validate a pipeline file: every problem is listed with its row and the fix.
    Check {
        /// The pipeline file.
        file: PathBuf,
    },
    /// Print a pipeline's table as a person reads it.
    Show {
        /// The pipeline file (default: pipelines/reservations.toml if present, else the built-in one).
        file: Option<PathBuf>,
    },
    /// What changing the table does: replay the same input under two pipeline
    /// files, each from empty state, and list the events that differ.
    #[command(after_help = "An event differs when the other table emits no event with the same reservation, source\n\
position and event type and the same content (all but eventId). The report names the row\n\
(file:line) that fired each event on each side. --json prints one line per differing event:\n\
{\"side\": \"old\"|\"new\", \"event\": {…}}; a changed event is one line of each.\n\n\
Exit status: 0 nothing differs, 1 something does, 2 it could not run (a pipeline file that\n\
fails its check, an input that cannot be read).\n\n\
Examples:\n  \
resevent pipeline diff pipelines/reservations.toml new.toml history.jsonl\n  \
resevent tail --raw --topic property.reservation --from-beginning | resevent pipeline diff old.toml new.toml --json")]
    Diff(DiffArgs),
}

/// `resevent pipeline diff`'s arguments.
#[derive(clap::Args)]
struct DiffArgs {
    /// The pipeline file in force.
    old: PathBuf,
    /// The pipeline file proposed.
    new: PathBuf,
    /// JSON Lines files of change events, in order (default: stdin).
    files: Vec<PathBuf>,
    /// Input format; auto recognizes each record's format from its shape.
    #[arg(long, value_enum, default_value_t = Format::Auto)]
    format: Format,
    /// Lines are {"key": K, "value": V} (needed for Debezium deletes, whose id is only in the key).
    #[arg(long)]
    keyed: bool,
    /// Overrides both pipelines' allowlists (comma-separated, or *).
    #[arg(long, value_name = "P1,P2")]
    allow_properties: Option<String>,
    /// After the input, move stream time to this moment (RFC 3339) and fire the timers due by then, on both sides.
    #[arg(long, value_name = "TIME", value_parser = parse_until)]
    until: Option<i64>,
    /// One JSON line per differing event instead of the report for people.
    #[arg(long)]
    json: bool,
}

/// The version, librdkafka's and its `builtin.features` (ssl, sasl_scram, …).
fn long_version() -> &'static str {
    let (_, librdkafka) = rdkafka::util::get_rdkafka_version();
    let features = rdkafka::ClientConfig::new().create_native_config().ok().and_then(|c| c.get("builtin.features").ok()).unwrap_or_else(|| "unknown".into());
    Box::leak(format!("{}\nlibrdkafka {librdkafka}\nbuiltin.features: {features}", env!("CARGO_PKG_VERSION")).into_boxed_str())
}

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RESEVENT_LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // --version also says what the bundled librdkafka can do (TLS, SASL mechanisms).
    let matches = <Cli as clap::CommandFactory>::command().long_version(long_version()).get_matches();
    let cli = match <Cli as clap::FromArgMatches>::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    // Every log line is scrubbed of the configuration's secrets (librdkafka's
    // errors quote the values it refuses).
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(|| resevent::secrets::ScrubbedStderr).with_target(false);
    match cli.log_format {
        LogFormat::Text => logs.with_ansi(io::stderr().is_terminal()).init(),
        LogFormat::Json => logs.json().with_current_span(false).init(),
    }
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", resevent::secrets::scrub(&format!("{e:#}")));
            ExitCode::from(2)
        }
    }
}

/// One function per command; each returns the process's exit status.
fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Workload(args) => workload(&args),
        Command::Dlq(args) => {
            let verdict = runtime()?.block_on(resevent::dlq::run(args, std::env::vars(), &mut io::stdout().lock()))?;
            Ok(ExitCode::from(verdict.exit_code()))
        }
        Command::Tail(args) => tail(&args),
        Command::State { command: StateCommand::Get { id, state_dir } } => state_get(&state_dir, &id),
        Command::State { command: StateCommand::Dump { state_dir } } => {
            let n = resevent::inspect::dump(&state_dir, &mut BufWriter::new(io::stdout().lock()))?;
            tracing::info!(reservations = n, "state dumped");
            Ok(ExitCode::SUCCESS)
        }
        Command::Pipeline { command: PipelineCommand::Check { file } } => {
            let p = Pipeline::load(&file)?;
            println!("{}: ok ({} rules)", file.display(), p.rules.len());
            Ok(ExitCode::SUCCESS)
        }
        Command::Pipeline { command: PipelineCommand::Diff(args) } => Ok(pipeline_diff(args)),
        Command::Pipeline { command: PipelineCommand::Show { file } } => {
            let (p, origin) = load_pipeline(file.as_deref())?;
            println!("Pipeline: {origin}");
            print!("{}", p.describe());
            Ok(ExitCode::SUCCESS)
        }
        Command::Run { config, flags, passthrough } => run_service(config.as_deref(), flags, passthrough),
        Command::Capture(args) => capture(args),
        Command::Replay(args) => replay_files(args),
    }
}

/// The runtime every Kafka command runs on: two workers (the service's loop
/// and its sends; the machine this is sized for has two cores).
fn runtime() -> io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()
}

fn workload(args: &WorkloadArgs) -> anyhow::Result<ExitCode> {
    let reservations = args.reservations.unwrap_or(args.events / 4).max(1);
    let mut workload = resevent::workload::Workload::new(reservations, args.seed);
    let mut out = io::BufWriter::with_capacity(1 << 20, io::stdout().lock());
    for _ in 0..args.events {
        let (id, value) = workload.next_event();
        if args.keyed {
            writeln!(out, "{{\"key\": \"{id}\", \"value\": {value}}}")?;
        } else {
            writeln!(out, "{value}")?;
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

fn tail(args: &resevent::tail::TailArgs) -> anyhow::Result<ExitCode> {
    let mut out = io::stdout().lock();
    let counts = runtime()?.block_on(async {
        tokio::select! {
            r = resevent::tail::run(args, std::env::vars(), &mut out) => r.map(Some),
            _ = shutdown_signal() => Ok(None),
        }
    })?;
    if let Some(c) = counts {
        tracing::info!(printed = c.printed, filtered = c.filtered, undecodable = c.undecodable, "tail done");
    }
    Ok(ExitCode::SUCCESS)
}

fn state_get(state_dir: &Path, id: &str) -> anyhow::Result<ExitCode> {
    let found = resevent::inspect::get(state_dir, id)?;
    for r in &found {
        println!("{r}");
    }
    if found.is_empty() {
        eprintln!("reservation {id:?} is not in {} (its partition may be owned by another instance)", state_dir.display());
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// `resevent run`: settings layered, the pipeline and engine built here, the
/// service (or the passthrough baseline) run until SIGTERM.
fn run_service(config: Option<&Path>, flags: Overrides, passthrough: bool) -> anyhow::Result<ExitCode> {
    let cfg = RunConfig::load(config, std::env::vars(), flags)?;
    let runtime = runtime()?;
    if passthrough {
        let summary = runtime.block_on(resevent::run::passthrough::run(cfg, shutdown_signal()))?;
        println!("{}", summary.to_json());
        return Ok(ExitCode::SUCCESS);
    }
    let (pipeline, origin) = load_pipeline(cfg.pipeline.as_deref())?;
    tracing::info!(pipeline = %origin, "pipeline loaded");
    let engine = Engine::new(pipeline.clone(), Decoder::new(cfg.format, pipeline.paths.clone()).with_limits(cfg.limits()));
    let file = pipeline_file(cfg.pipeline.as_deref());
    let summary = runtime.block_on(resevent::run::run(cfg, engine, file, shutdown_signal()))?;
    if summary.first_batch.is_some() {
        println!("{}", summary.to_json());
    }
    Ok(ExitCode::SUCCESS)
}

fn capture(args: CaptureArgs) -> anyhow::Result<ExitCode> {
    use resevent::capture::config::{CaptureConfig, CaptureOverrides};
    let CaptureArgs { config, mongo_uri, database, collection, topic, partitions, bootstrap_servers, change_stream_pipeline, copy_existing, lease_ms, restart_from, http_addr, no_http } = args;
    let flags = CaptureOverrides { mongo_uri, database, collection, topic, partitions, bootstrap_servers, change_stream_pipeline, copy_existing, lease_ms, http_addr, no_http };
    let cfg = CaptureConfig::load(config.as_deref(), std::env::vars(), flags)?;
    match runtime()?.block_on(resevent::capture::run(cfg, restart_from, shutdown_signal())) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => match e.downcast_ref::<resevent::capture::CaptureError>() {
            Some(c) => {
                eprintln!("error: {}", resevent::secrets::scrub(&format!("{e:#}")));
                Ok(ExitCode::from(c.exit_code()))
            }
            None => Err(e),
        },
    }
}

/// `resevent replay`: files (or stdin) through the engine into a fresh or
/// given state directory; exit 1 when any line was rejected.
fn replay_files(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let ReplayArgs { pipeline, format, keyed, allow_properties, state_dir, dead_letters, until, explain, files } = args;
    let (mut pipeline, origin) = load_pipeline(pipeline.as_deref())?;
    if let Some(list) = allow_properties {
        pipeline.allowlist = Allowlist::parse_list(&list);
    }
    let _temp;
    let dir = match state_dir {
        Some(d) => d,
        None => {
            _temp = tempfile::Builder::new().prefix("resevent-replay-").tempdir().context("creating a temporary state directory")?;
            _temp.path().to_path_buf()
        }
    };
    let mut store = StateStore::open(&dir).with_context(|| format!("opening state dir {} (is another resevent using it?)", dir.display()))?;
    tracing::info!(pipeline = %origin, format = ?format, state_dir = %dir.display(), "replay starting");
    let inputs = open_inputs(&files)?;
    let dead_letters: Option<Box<dyn Write>> = match dead_letters {
        Some(p) => Some(Box::new(BufWriter::new(File::create(&p).with_context(|| format!("creating dead-letter file {}", p.display()))?))),
        None => None,
    };
    let mut engine = Engine::new(pipeline.clone(), Decoder::new(format, pipeline.paths.clone()));
    let explain = explain.map(|mode| {
        engine.explain = true;
        let file = if origin == "built-in default" { None } else { Some(PathBuf::from(&origin)) };
        replay::Explain { json: mode == "json", rows: resevent::pipeline::RowLocator::new(file.as_deref()) }
    });
    let stdout = io::stdout();
    let mut out = BufWriter::with_capacity(1 << 16, stdout.lock());
    let opts = ReplayOptions { keyed, dead_letters, progress_every: Duration::from_secs(5), until, explain };
    let counts = replay::replay(&engine, &mut store, inputs, &mut out, opts)?;
    tracing::info!(
        records = counts.records,
        changes = counts.changes,
        events = counts.events,
        stale = counts.stale,
        duplicates = counts.duplicates,
        unmapped = counts.unmapped,
        ignored = counts.ignored,
        rejected = counts.rejected,
        timers = counts.timers,
        retired = counts.retired,
        "replay finished"
    );
    if counts.rejected > 0 {
        eprintln!("{} line(s) rejected; see the messages above", counts.rejected);
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// `resevent pipeline diff`: exit 0 when nothing differs, 1 when something
/// does, 2 when it could not run.
fn pipeline_diff(args: DiffArgs) -> ExitCode {
    let run = || -> anyhow::Result<bool> {
        let side = |file: &Path| -> anyhow::Result<resevent::diff::Side> {
            let mut pipeline = Pipeline::load(file)?;
            if let Some(list) = &args.allow_properties {
                pipeline.allowlist = Allowlist::parse_list(list);
            }
            let engine = Engine::new(pipeline.clone(), Decoder::new(args.format, pipeline.paths.clone()));
            Ok(resevent::diff::Side::new(engine, file.to_path_buf()))
        };
        let (old, new) = (side(&args.old)?, side(&args.new)?);
        let inputs = open_inputs(&args.files)?;
        let opts = resevent::diff::DiffOptions { keyed: args.keyed, until: args.until, json: args.json, progress_every: Duration::from_secs(5) };
        resevent::diff::diff(&old, &new, inputs, &mut BufWriter::with_capacity(1 << 16, io::stdout().lock()), &opts)
    };
    match run() {
        Ok(false) => ExitCode::SUCCESS,
        Ok(true) => ExitCode::from(1),
        Err(e) => {
            eprintln!("resevent pipeline diff: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// `--until`: an RFC 3339 moment, as epoch ms.
fn parse_until(text: &str) -> Result<i64, String> {
    resevent::time::parse_millis(text).ok_or_else(|| format!("{text:?} is not an RFC 3339 time; write it like 2026-11-25T00:00:00Z"))
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}

/// The pipeline to use and a description of where it came from.
fn load_pipeline(explicit: Option<&Path>) -> anyhow::Result<(Pipeline, String)> {
    if let Some(p) = explicit {
        return Ok((Pipeline::load(p)?, p.display().to_string()));
    }
    let default = Path::new(DEFAULT_PIPELINE_PATH);
    if default.exists() {
        return Ok((Pipeline::load(default)?, default.display().to_string()));
    }
    Ok((Pipeline::builtin(), "built-in default".into()))
}

/// The file `load_pipeline` reads, if any (the service re-reads it on SIGHUP).
fn pipeline_file(explicit: Option<&Path>) -> Option<PathBuf> {
    match explicit {
        Some(p) => Some(p.to_path_buf()),
        None => Some(PathBuf::from(DEFAULT_PIPELINE_PATH)).filter(|p| p.exists()),
    }
}

fn open_inputs(files: &[PathBuf]) -> anyhow::Result<Vec<Input>> {
    if files.is_empty() {
        return Ok(vec![Input { name: "stdin".into(), reader: Box::new(BufReader::new(io::stdin())) }]);
    }
    let mut inputs = Vec::new();
    for f in files {
        if f.as_os_str() == "-" {
            inputs.push(Input { name: "stdin".into(), reader: Box::new(BufReader::new(io::stdin())) });
            continue;
        }
        if f.is_dir() {
            bail!("{} is a directory; give the JSON Lines files inside it", f.display());
        }
        let file = File::open(f).with_context(|| format!("opening input {}", f.display()))?;
        let reader: Box<dyn BufRead> = Box::new(BufReader::with_capacity(1 << 16, file));
        inputs.push(Input { name: f.display().to_string(), reader });
    }
    Ok(inputs)
}
