//! LL-HLS part-availability latency (issue 4, item 8): from the moment the origin publishes a part to the moment a
//! viewer blocked on it has its bytes, directly at the origin, through the relay, and through nginx in front of the
//! same origin. Method and results: `benches/latency/README.md`.
//!
//! ```sh
//! cargo bench --bench part_latency        # about 2.5 minutes
//! ```
//!
//! Everything runs on 127.0.0.1:
//!
//! - the simulator, in this process on a runtime of its own: an LL-HLS broadcast (fMP4, 0.5 s parts produced in
//!   real time, `CAN-BLOCK-RELOAD=YES`, preload hints whose bytes are streamed as they are produced);
//! - the relay binary (`hls-relay serve`) as a subprocess, resolving the call through the simulator's API;
//! - nginx as a subprocess, an LL-HLS-aware `proxy_cache` in front of the same origin (see `nginx_conf`);
//! - the viewers, in this process on another runtime, each doing what an LL-HLS player does for every part: ask
//!   for the media playlist blocked until it lists the part (`_HLS_msn`/`_HLS_part`) and, at the same time, for
//!   the part itself at the URI of the preload hint, whose bytes arrive as the part is produced.
//!
//! Each part is measured from two references: its publication on the simulator's production timeline (read from
//! `EXT-X-PROGRAM-DATE-TIME`), and one reference viewer blocked directly at the origin. "Added" is a target's
//! completion instant minus the reference viewer's for the same part: what the hop costs, with what the origin and
//! this client cost taken out.
//!
//! Knobs (environment): `PART_LATENCY_PARTS` (measured parts per phase, 120 = 60 s), `PART_LATENCY_WARMUP`
//! (parts dropped at the start of a phase, 6), `PART_LATENCY_VIEWERS` (viewers per target, one phase each, "1,100"),
//! `PART_LATENCY_TARGETS` ("origin,relay,nginx"), `PART_LATENCY_SEPARATE` (1: one phase per target instead of all
//! targets over the same parts), `PART_LATENCY_GZIP` (1: send `Accept-Encoding: gzip` as browser players do; 0:
//! don't), `PART_LATENCY_NICE` (e.g. -10 on a shared machine, see `prioritise`), `PART_LATENCY_NGINX` (the nginx
//! binary, `/usr/sbin/nginx`), `PART_LATENCY_SAMPLES` (a file to write every sample to, TSV).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs::File;
use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use flate2::read::GzDecoder;
use hls_relay::sim::{self, CallSetup, Flavour, SimConfig, SimHandle};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper::http::{Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use url::Url;

const CALL_TYPE: &str = "livestream";
const CALL_ID: &str = "latency";
const PARTS_PER_SEGMENT: u64 = sim::PARTS_PER_SEGMENT as u64;
/// Longer than any blocking request may be held (the origin gives up after 6 s), short enough not to hang a run.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// A viewer whose request failed waits this long before joining the stream again.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// How long a server may take to start listening.
const STARTUP_PATIENCE: Duration = Duration::from_secs(15);

fn main() -> ExitCode {
    let settings = Settings::from_env();
    if let Some(nice) = settings.nice {
        prioritise(nice);
    }
    // The simulator gets a runtime of its own so that the bursts of responses the viewers read at each publication
    // do not delay the origin's own timeline (and the other way round). Both share the machine's two cores with
    // the relay and nginx, as they would share a host.
    let sim_runtime = runtime("sim", 2);
    // The reference viewer too: alone on its thread, it is not queued behind the crowds' responses.
    let reference_runtime = runtime("reference", 1);
    let sim = match sim_runtime.block_on(start_simulator()) {
        Ok(sim) => sim,
        Err(error) => {
            eprintln!("part_latency: the simulator did not start: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime("viewers", 2).block_on(run(&settings, &sim, reference_runtime.handle()));
    sim.shutdown();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("part_latency: {error}");
            ExitCode::FAILURE
        }
    }
}

/// On a shared machine: gives this process (and so the runtimes' threads and the servers it starts, which inherit
/// it) the nice value `nice`, and its session's autogroup too. With autogroup scheduling the kernel shares CPU
/// between sessions before nice values count inside one, so a build in another session would otherwise get as much
/// CPU as the whole benchmark. Lowering either needs root; failures are reported and the run goes on.
fn prioritise(nice: i32) {
    let pid = std::process::id().to_string();
    let reniced = Command::new("renice")
        .args(["-n", &nice.to_string(), "-p", &pid])
        .stdout(Stdio::null())
        .status();
    if !reniced.is_ok_and(|status| status.success()) {
        eprintln!("part_latency: renice {nice} failed, running at the default priority");
    }
    if let Err(error) = std::fs::write("/proc/self/autogroup", nice.to_string()) {
        eprintln!("part_latency: cannot set the autogroup's nice value: {error}");
    }
}

fn runtime(name: &str, threads: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name(name)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// The benchmark's knobs, from the environment.
struct Settings {
    parts: u64,
    warmup: u64,
    viewers: Vec<usize>,
    targets: Vec<String>,
    gzip: bool,
    separate: bool,
    nice: Option<i32>,
    nginx: PathBuf,
    samples_file: Option<PathBuf>,
}

impl Settings {
    fn from_env() -> Settings {
        let list = |name: &str, default: &str| -> Vec<String> {
            env_or(name, default.to_owned())
                .split(',')
                .map(|item| item.trim().to_owned())
                .filter(|item| !item.is_empty())
                .collect()
        };
        Settings {
            parts: env_or("PART_LATENCY_PARTS", 120),
            warmup: env_or("PART_LATENCY_WARMUP", 6),
            viewers: list("PART_LATENCY_VIEWERS", "1,100")
                .iter()
                .map(|n| n.parse().expect("PART_LATENCY_VIEWERS: numbers"))
                .collect(),
            targets: list("PART_LATENCY_TARGETS", "origin,relay,nginx"),
            gzip: env_or("PART_LATENCY_GZIP", 1u8) != 0,
            separate: env_or("PART_LATENCY_SEPARATE", 0u8) != 0,
            nice: std::env::var("PART_LATENCY_NICE")
                .ok()
                .map(|n| n.parse().expect("PART_LATENCY_NICE: a number")),
            nginx: env_or("PART_LATENCY_NGINX", PathBuf::from("/usr/sbin/nginx")),
            samples_file: std::env::var_os("PART_LATENCY_SAMPLES").map(PathBuf::from),
        }
    }

    fn wants(&self, target: &str) -> bool {
        self.targets.iter().any(|t| t == target)
    }
}

fn env_or<T: FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(value) => value
            .parse()
            .unwrap_or_else(|_| panic!("{name}: cannot read {value:?}")),
        Err(_) => default,
    }
}

async fn start_simulator() -> std::io::Result<SimHandle> {
    let sim = sim::start(SimConfig::default()).await?;
    let low_latency = CallSetup {
        flavour: Flavour::Fmp4,
        low_latency: true,
        ..Default::default()
    };
    sim.add_call(CALL_TYPE, CALL_ID, low_latency);
    Ok(sim)
}

async fn run(
    settings: &Settings,
    sim: &SimHandle,
    reference_runtime: &tokio::runtime::Handle,
) -> Result<(), String> {
    let work_dir = work_dir()?;
    let origin_master = sim
        .playlist_url(CALL_TYPE, CALL_ID)
        .ok_or("the simulated call has no playlist URL")?;
    let origin_master = Url::parse(&origin_master).map_err(|e| e.to_string())?;
    let reference = {
        let (master, gzip) = (origin_master.clone(), settings.gzip);
        // Made on its runtime, so that its connections are too.
        reference_runtime
            .spawn(async move { Target::new("reference", &master, gzip).await })
            .await
            .map_err(|e| e.to_string())??
    };
    // The servers are stopped when `servers` is dropped, whatever happens below.
    let (servers, targets) = start_targets(settings, sim, &origin_master, work_dir.path()).await?;
    let (text, _) = Http1::default()
        .get_text(&reference.media_playlist, false)
        .await?;
    let timeline = Timeline::read(&text).ok_or("no PROGRAM-DATE-TIME in the origin's playlist")?;
    println!(
        "part_latency: {} measured parts per phase after {} warm-up parts, viewers per target {:?}, targets {:?}, \
         Accept-Encoding gzip: {}",
        settings.parts,
        settings.warmup,
        settings.viewers,
        targets.iter().map(|t| t.name).collect::<Vec<_>>(),
        settings.gzip,
    );
    let reference = (&reference, reference_runtime);
    let rows = measure(settings, reference, &targets, &servers, &timeline).await?;
    println!("\nall phases (ms):\n{}", table(&rows));
    for server in &servers {
        server.print_log_tail();
    }
    Ok(())
}

/// Starts the servers the settings ask for and follows each target's entry URL to its media playlist.
async fn start_targets(
    settings: &Settings,
    sim: &SimHandle,
    origin_master: &Url,
    work_dir: &Path,
) -> Result<(Vec<Process>, Vec<Arc<Target>>), String> {
    let (mut servers, mut targets) = (Vec::new(), Vec::new());
    if settings.wants("origin") {
        targets.push(Target::new("origin", origin_master, settings.gzip).await?);
    }
    if settings.wants("relay") {
        let (process, entry) = start_relay(sim, work_dir).await?;
        servers.push(process);
        targets.push(Target::new("relay", &entry, settings.gzip).await?);
    }
    if settings.wants("nginx") && !settings.nginx.exists() {
        println!(
            "nginx: {} not found, the nginx target is skipped (PART_LATENCY_NGINX names another binary)",
            settings.nginx.display()
        );
    } else if settings.wants("nginx") {
        let (process, master) = start_nginx(&settings.nginx, work_dir, origin_master).await?;
        servers.push(process);
        targets.push(Target::new("nginx", &master, settings.gzip).await?);
    }
    Ok((servers, targets))
}

/// Runs the phases (each viewer count; all targets together, or each alone) and prints each one's figures.
async fn measure(
    settings: &Settings,
    reference: (&Arc<Target>, &tokio::runtime::Handle),
    targets: &[Arc<Target>],
    servers: &[Process],
    timeline: &Timeline,
) -> Result<Vec<Row>, String> {
    let mut samples_out = match &settings.samples_file {
        Some(path) => {
            Some(SamplesFile::create(path).map_err(|e| format!("{}: {e}", path.display()))?)
        }
        None => None,
    };
    // Together: every target over the same parts, as the viewers of each would be on one host. Separately: one
    // target at a time (with the reference viewer), so that no target's burst of responses delays another's.
    let groups: Vec<&[Arc<Target>]> = match settings.separate {
        true => targets.chunks(1).collect(),
        false => vec![targets],
    };
    let mut rows = Vec::new();
    for &viewers in &settings.viewers {
        for &group in &groups {
            let span = Span::after(timeline.next_unpublished(), settings.warmup, settings.parts);
            println!(
                "\nphase: {viewers} viewer(s) per target on {:?}, parts {}..{} ({:.0} s)",
                group.iter().map(|t| t.name).collect::<Vec<_>>(),
                span.first.0,
                span.end.0,
                span.duration().as_secs_f64()
            );
            let cpu_before = CpuUse::now(servers);
            let phase = run_phase(reference, group, viewers, span).await;
            let cpu = CpuUse::now(servers).since(&cpu_before);
            if let Some(file) = samples_out.as_mut() {
                file.write_phase(&phase, timeline, viewers, span)
                    .map_err(|e| format!("writing samples: {e}"))?;
            }
            let phase_rows = phase.rows(timeline, viewers, span);
            print!("{}", table(&phase_rows));
            println!("{}", cpu.per_part(span.duration()));
            print_errors(&phase);
            rows.extend(phase_rows);
        }
    }
    Ok(rows)
}

/// Scratch space for the servers' configs, logs and nginx's cache: on tmpfs when there is one, as a cache in front
/// of live streams would be. Deleted at the end.
fn work_dir() -> Result<tempfile::TempDir, String> {
    let builder = {
        let mut b = tempfile::Builder::new();
        b.prefix("part-latency-");
        b
    };
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        builder.tempdir_in(shm)
    } else {
        builder.tempdir()
    }
    .map_err(|e| format!("a work directory: {e}"))?;
    // nginx's workers drop root privileges (to `nobody`) and must reach their cache below this directory.
    set_mode(dir.path(), 0o755)?;
    Ok(dir)
}

fn set_mode(path: &Path, mode: u32) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("chmod {}: {e}", path.display()))
}

// ---------------------------------------------------------------------------------------------------------------
// Parts and the production timeline

/// A part's number on the broadcast's timeline: part `k` of media sequence number `m` is `m * 4 + k`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Part(u64);

impl Part {
    fn msn(self) -> u64 {
        self.0 / PARTS_PER_SEGMENT
    }

    fn index(self) -> u64 {
        self.0 % PARTS_PER_SEGMENT
    }

    fn next(self) -> Part {
        Part(self.0 + 1)
    }

    fn at(msn: u64, index: u64) -> Option<Part> {
        (index < PARTS_PER_SEGMENT).then_some(Part(msn * PARTS_PER_SEGMENT + index))
    }
}

impl std::fmt::Display for Part {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "part {} of MSN {}", self.index(), self.msn())
    }
}

/// When the origin publishes each part: the simulator produces part `g` over [0.5 g s, 0.5 (g + 1) s) after MSN 0
/// began, so it is complete 0.5 (g + 1) s after that, and MSN 0 began `2 m` s before the PROGRAM-DATE-TIME of MSN
/// `m`. The simulator writes that date in whole milliseconds, truncated: publication instants read from it are up
/// to 1 ms early, which the reference viewer shows (its "since publication" figures are 0–1 ms higher than they
/// should be).
struct Timeline {
    /// Unix milliseconds at which MSN 0 began.
    epoch_ms: f64,
    /// An instant and the wall-clock time at it, to put `Instant`s and Unix times on one axis.
    anchor: Instant,
    anchor_ms: f64,
}

impl Timeline {
    fn read(playlist: &str) -> Option<Timeline> {
        let tag = |name: &str| {
            playlist
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .map(str::trim)
        };
        let first_msn: u64 = tag("#EXT-X-MEDIA-SEQUENCE:")?.parse().ok()?;
        // The first date belongs to the first segment listed (the playlist is not a delta update).
        let date = tag("#EXT-X-PROGRAM-DATE-TIME:")?;
        let date =
            time::OffsetDateTime::parse(date, &time::format_description::well_known::Rfc3339)
                .ok()?;
        let first_ms = date.unix_timestamp_nanos() as f64 / 1e6;
        let segment_ms = (sim::SEGMENT_SECS * 1000) as f64;
        let anchor = Instant::now();
        let anchor_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .ok()?
            .as_secs_f64()
            * 1e3;
        Some(Timeline {
            epoch_ms: first_ms - first_msn as f64 * segment_ms,
            anchor,
            anchor_ms,
        })
    }

    fn part_ms() -> f64 {
        sim::PART_INTERVAL.as_secs_f64() * 1e3
    }

    /// Unix milliseconds at which `part` is complete on the origin.
    fn published_ms(&self, part: Part) -> f64 {
        self.epoch_ms + (part.0 + 1) as f64 * Self::part_ms()
    }

    fn unix_ms(&self, at: Instant) -> f64 {
        if at >= self.anchor {
            self.anchor_ms + (at - self.anchor).as_secs_f64() * 1e3
        } else {
            self.anchor_ms - (self.anchor - at).as_secs_f64() * 1e3
        }
    }

    /// How long after its publication `part` reached a viewer at `at`, in milliseconds.
    fn since_published(&self, part: Part, at: Instant) -> f64 {
        self.unix_ms(at) - self.published_ms(part)
    }

    /// The first part not published yet.
    fn next_unpublished(&self) -> Part {
        let now = self.unix_ms(Instant::now());
        Part(((now - self.epoch_ms) / Self::part_ms()).floor().max(0.0) as u64)
    }
}

/// The parts a phase measures, `first..end`. Its viewers start at `start`, some parts before `first`, and those
/// parts are dropped: connections being opened, caches filling, viewers falling into step.
#[derive(Clone, Copy)]
struct Span {
    start: Part,
    first: Part,
    end: Part,
}

impl Span {
    fn after(now: Part, warmup: u64, parts: u64) -> Span {
        let first = Part(now.0 + warmup);
        Span {
            start: now,
            first,
            end: Part(first.0 + parts),
        }
    }

    fn contains(&self, part: Part) -> bool {
        (self.first..self.end).contains(&part)
    }

    /// From the start of the warm-up to the end.
    fn duration(&self) -> Duration {
        sim::PART_INTERVAL * (self.end.0 - self.start.0) as u32
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Playlists, as a player reads them

/// Where a live media playlist says each part is: its `EXT-X-PART`s and its `EXT-X-PRELOAD-HINT`, as written. Relay
/// URIs are opaque (they keep no origin file name), so a part is known by its place, as a player knows it: the
/// segment it belongs to counts from `EXT-X-MEDIA-SEQUENCE` (one more after each `EXTINF`), its index from the
/// segment's first part, and the preload hint names the part after the last one listed. Only the URI a viewer
/// fetches is resolved against the playlist's URL: a viewer reads a playlist per part, and the measuring side must
/// stay cheap.
struct PartList {
    base: Url,
    listed: HashMap<Part, String>,
    hinted: Option<(Part, String)>,
}

impl PartList {
    fn read(text: &str, base: Url) -> PartList {
        let uri = |line: &str| -> Option<String> {
            Some(line.split_once("URI=\"")?.1.split('"').next()?.to_owned())
        };
        let mut list = PartList {
            base,
            listed: HashMap::new(),
            hinted: None,
        };
        let (mut msn, mut index) = (0, 0);
        for line in text.lines() {
            if let Some(sequence) = line.strip_prefix("#EXT-X-MEDIA-SEQUENCE:") {
                msn = sequence.trim().parse().unwrap_or(0);
            } else if line.starts_with("#EXTINF:") {
                (msn, index) = (msn + 1, 0);
            } else if line.starts_with("#EXT-X-PART:") {
                if let (Some(part), Some(uri)) = (Part::at(msn, index), uri(line)) {
                    list.listed.insert(part, uri);
                }
                index += 1;
            } else if line.starts_with("#EXT-X-PRELOAD-HINT:TYPE=PART,") {
                list.hinted = Part::at(msn, index).zip(uri(line));
            }
        }
        list
    }

    fn lists(&self, part: Part) -> bool {
        self.listed.contains_key(&part)
    }

    fn last_listed(&self) -> Option<Part> {
        self.listed.keys().max().copied()
    }

    /// Where to get `part`: listed when it is complete, hinted while it is being produced.
    fn url_of(&self, part: Part) -> Option<Url> {
        let uri = self.listed.get(&part).or(match &self.hinted {
            Some((hinted, uri)) if *hinted == part => Some(uri),
            _ => None,
        })?;
        self.base.join(uri).ok()
    }
}

/// The blocking reload for `part`: the media playlist held until it lists that part.
fn blocking_url(media_playlist: &Url, part: Part) -> Url {
    let mut url = media_playlist.clone();
    url.set_query(Some(&format!(
        "_HLS_msn={}&_HLS_part={}",
        part.msn(),
        part.index()
    )));
    url
}

// ---------------------------------------------------------------------------------------------------------------
// Targets and viewers

/// Somewhere viewers watch the broadcast from: the origin itself, the relay or nginx.
struct Target {
    name: &'static str,
    /// The video rendition's media playlist, as this target names it.
    media_playlist: Url,
    /// Send `Accept-Encoding: gzip`, as browsers do.
    gzip: bool,
}

impl Target {
    /// Follows `entry` (a multivariant playlist) to its first variant, as a player does.
    async fn new(name: &'static str, entry: &Url, gzip: bool) -> Result<Arc<Target>, String> {
        let (master, _) = Http1::default().get_text(entry, gzip).await?;
        let variant = master
            .lines()
            .map(str::trim)
            .find(|line| !line.is_empty() && !line.starts_with('#'))
            .ok_or_else(|| format!("{name}: no variant in {entry}"))?;
        let media_playlist = entry.join(variant).map_err(|e| e.to_string())?;
        Ok(Arc::new(Target {
            name,
            media_playlist,
            gzip,
        }))
    }
}

/// When a viewer had one part: the blocked playlist that lists it, and the part's last byte (None: that request
/// failed, or the playlist did not list the part).
struct Sample {
    part: Part,
    playlist: Option<Instant>,
    last_byte: Option<Instant>,
}

#[derive(Default)]
struct ViewerLog {
    samples: Vec<Sample>,
    errors: Vec<String>,
}

/// One viewer, taking every part from `span`'s warm-up to its end as an LL-HLS player does, over two keep-alive
/// connections of its own: one for playlists, one for parts.
struct Viewer {
    target: Arc<Target>,
    end: Part,
    playlists: Http1,
    parts: Http1,
    log: ViewerLog,
}

impl Viewer {
    fn new(target: &Arc<Target>, end: Part) -> Viewer {
        Viewer {
            target: target.clone(),
            end,
            playlists: Http1::default(),
            parts: Http1::default(),
            log: ViewerLog::default(),
        }
    }

    async fn run(mut self, give_up: Instant) -> ViewerLog {
        let mut position: Option<(PartList, Part)> = None;
        while Instant::now() < give_up {
            let (list, part) = match position.take() {
                Some(position) => position,
                None => match self.join().await {
                    Ok(position) => position,
                    Err(error) => {
                        self.failed(error).await;
                        continue;
                    }
                },
            };
            if part >= self.end {
                break;
            }
            match self.take(&list, part).await {
                Ok(newer) => position = Some((newer, part.next())),
                Err(error) => self.failed(error).await,
            }
        }
        self.log
    }

    /// Joins the stream as a player does: the current playlist, then the part after the last one it lists (the
    /// one its preload hint names).
    async fn join(&mut self) -> Result<(PartList, Part), String> {
        let url = &self.target.media_playlist;
        let (text, _) = self.playlists.get_text(url, self.target.gzip).await?;
        let list = PartList::read(&text, url.clone());
        let last = list.last_listed().ok_or("a playlist without parts")?;
        Ok((list, last.next()))
    }

    /// One part: the playlist blocked until it lists `part`, and the part itself from where the last playlist said
    /// it is (its preload hint; its `EXT-X-PART` when the viewer is behind), both requested at once. Returns the
    /// newer playlist; an error means joining again. (A player's playlist and part loops are independent; here the
    /// next part waits for both, which changes nothing when both come as the part is published.)
    async fn take(&mut self, list: &PartList, part: Part) -> Result<PartList, String> {
        let part_url = list
            .url_of(part)
            .ok_or_else(|| format!("{part} neither listed nor hinted"))?;
        let blocked = blocking_url(&self.target.media_playlist, part);
        let gzip = self.target.gzip;
        let (playlist, last_byte) = tokio::join!(
            self.playlists.get_text(&blocked, gzip),
            self.parts.get(&part_url, gzip)
        );
        let newer = playlist.and_then(|(text, at)| {
            let newer = PartList::read(&text, blocked);
            match newer.lists(part) {
                true => Ok((newer, at)),
                false => Err(format!("the blocked playlist does not list {part}")),
            }
        });
        self.log.samples.push(Sample {
            part,
            playlist: newer.as_ref().ok().map(|(_, at)| *at),
            last_byte: last_byte.as_ref().ok().map(|got| got.at),
        });
        if let Err(error) = last_byte {
            self.log.errors.push(error);
        }
        newer.map(|(newer, _)| newer)
    }

    async fn failed(&mut self, error: String) {
        self.log.errors.push(error);
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}

/// A response body and when its last byte arrived.
struct Got {
    body: Vec<u8>,
    gzipped: bool,
    at: Instant,
}

/// One keep-alive HTTP/1.1 connection, opened on first use and again after a failure. Plain hyper rather than a
/// client library: with 300 viewers reading at the same instant, the measuring side's own CPU per response is what
/// delays the last viewers, so it is kept small (this is also why bodies are decompressed only after the clock is
/// read).
#[derive(Default)]
struct Http1 {
    sender: Option<(String, SendRequest<Empty<Bytes>>)>,
}

impl Http1 {
    /// GETs `url` and reads its body to the last byte (which is when a player can use it); 200 only.
    async fn get(&mut self, url: &Url, gzip: bool) -> Result<Got, String> {
        let result = tokio::time::timeout(REQUEST_TIMEOUT, self.exchange(url, gzip)).await;
        let got = match result {
            Ok(got) => got,
            Err(_) => Err("timed out".to_owned()),
        };
        if got.is_err() {
            // The connection may be mid-response: never reuse it.
            self.sender = None;
        }
        got.map_err(|e| format!("{}: {e}", url.path()))
    }

    /// GETs a playlist: its text, and when its last byte arrived (before it is decompressed).
    async fn get_text(&mut self, url: &Url, gzip: bool) -> Result<(String, Instant), String> {
        let got = self.get(url, gzip).await?;
        let body = match got.gzipped {
            true => {
                let mut text = Vec::new();
                std::io::Read::read_to_end(&mut GzDecoder::new(got.body.as_slice()), &mut text)
                    .map_err(|e| format!("{}: gzip: {e}", url.path()))?;
                text
            }
            false => got.body,
        };
        let text = String::from_utf8(body).map_err(|e| format!("{}: {e}", url.path()))?;
        Ok((text, got.at))
    }

    async fn exchange(&mut self, url: &Url, gzip: bool) -> Result<Got, String> {
        let authority = url[url::Position::BeforeHost..url::Position::AfterPort].to_owned();
        let sender = self.connected(&authority).await?;
        let mut request = Request::get(&url[url::Position::BeforePath..])
            .header(header::HOST, &authority)
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        if gzip {
            let gzip = header::HeaderValue::from_static("gzip");
            request.headers_mut().insert(header::ACCEPT_ENCODING, gzip);
        }
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let gzipped = response
            .headers()
            .get(header::CONTENT_ENCODING)
            .is_some_and(|coding| coding == "gzip");
        let mut incoming = response.into_body();
        let mut body = Vec::new();
        while let Some(frame) = incoming.frame().await {
            if let Ok(data) = frame.map_err(|e| e.to_string())?.into_data() {
                body.extend_from_slice(&data);
            }
        }
        let at = Instant::now();
        match (status, body.is_empty()) {
            (StatusCode::OK, false) => Ok(Got { body, gzipped, at }),
            (StatusCode::OK, true) => Err("empty body".into()),
            (status, _) => Err(status.to_string()),
        }
    }

    /// The connection to `authority` (a viewer's URLs all name its target), opened if there is none.
    async fn connected(
        &mut self,
        authority: &str,
    ) -> Result<&mut SendRequest<Empty<Bytes>>, String> {
        let reusable = matches!(&self.sender, Some((open, sender)) if open == authority && !sender.is_closed());
        if !reusable {
            let tcp = tokio::net::TcpStream::connect(authority)
                .await
                .map_err(|e| format!("connect {authority}: {e}"))?;
            tcp.set_nodelay(true).map_err(|e| e.to_string())?;
            let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(connection);
            self.sender = Some((authority.to_owned(), sender));
        }
        let (_, sender) = self.sender.as_mut().ok_or("no connection")?;
        sender.ready().await.map_err(|e| e.to_string())?;
        Ok(sender)
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Phases and figures

struct PhaseLogs {
    reference: ViewerLog,
    targets: Vec<(&'static str, Vec<ViewerLog>)>,
}

/// Runs `viewers` viewers per target and the reference viewer over `span`, all at once.
async fn run_phase(
    (reference, reference_runtime): (&Arc<Target>, &tokio::runtime::Handle),
    targets: &[Arc<Target>],
    viewers: usize,
    span: Span,
) -> PhaseLogs {
    let give_up = Instant::now() + span.duration() + Duration::from_secs(30);
    let viewer = |target: &Arc<Target>| Viewer::new(target, span.end).run(give_up);
    let reference_viewer = reference_runtime.spawn(viewer(reference));
    let crowds: Vec<_> = targets
        .iter()
        .map(|target| {
            let crowd: Vec<_> = (0..viewers).map(|_| tokio::spawn(viewer(target))).collect();
            (target.name, crowd)
        })
        .collect();
    let mut logs = PhaseLogs {
        reference: reference_viewer.await.unwrap_or_default(),
        targets: Vec::new(),
    };
    for (name, crowd) in crowds {
        let mut crowd_logs = Vec::new();
        for viewer in crowd {
            crowd_logs.push(viewer.await.unwrap_or_default());
        }
        logs.targets.push((name, crowd_logs));
    }
    logs
}

/// Median and 99th percentile (nearest rank) of some milliseconds.
#[derive(Clone, Copy, Default)]
struct Spread {
    median: f64,
    p99: f64,
    count: usize,
}

impl Spread {
    fn of(mut values: Vec<f64>) -> Spread {
        if values.is_empty() {
            return Spread::default();
        }
        values.sort_by(f64::total_cmp);
        let rank =
            |q: f64| values[((q * values.len() as f64).ceil() as usize).clamp(1, values.len()) - 1];
        Spread {
            median: rank(0.5),
            p99: rank(0.99),
            count: values.len(),
        }
    }

    fn cell(&self) -> String {
        match self.count {
            0 => "–".into(),
            _ => format!("{:.1} / {:.1}", self.median, self.p99),
        }
    }
}

/// One line of results: a target at a number of viewers.
struct Row {
    target: String,
    viewers: usize,
    samples: usize,
    expected: usize,
    errors: usize,
    playlist_added: Spread,
    part_added: Spread,
    /// Of the samples (viewer × part) with a reference, the share whose playlist or part came more than 10 ms after
    /// the reference viewer's (the acceptance bound).
    over_10ms: Option<f64>,
    playlist_age: Spread,
    part_age: Spread,
}

impl PhaseLogs {
    fn rows(&self, timeline: &Timeline, viewers: usize, span: Span) -> Vec<Row> {
        let reference: HashMap<Part, &Sample> = self
            .reference
            .samples
            .iter()
            .filter(|s| span.contains(s.part))
            .map(|s| (s.part, s))
            .collect();
        let expected = (span.end.0 - span.first.0) as usize;
        let mut rows = vec![row(
            "origin (reference)",
            1,
            expected,
            std::slice::from_ref(&self.reference),
            timeline,
            span,
            None,
        )];
        for (name, logs) in &self.targets {
            rows.push(row(
                name,
                viewers,
                expected * viewers,
                logs,
                timeline,
                span,
                Some(&reference),
            ));
        }
        rows
    }
}

/// A target's figures over `span`: since publication, and (with `reference`) added to the reference viewer's
/// completion of the same part.
fn row(
    target: &str,
    viewers: usize,
    expected: usize,
    logs: &[ViewerLog],
    timeline: &Timeline,
    span: Span,
    reference: Option<&HashMap<Part, &Sample>>,
) -> Row {
    let samples: Vec<&Sample> = logs
        .iter()
        .flat_map(|log| &log.samples)
        .filter(|s| span.contains(s.part))
        .collect();
    let age = |pick: fn(&Sample) -> Option<Instant>| {
        Spread::of(
            samples
                .iter()
                .filter_map(|s| Some(timeline.since_published(s.part, pick(s)?)))
                .collect(),
        )
    };
    // What the hop added to the reference viewer's completion of the same part, for the playlist and the part.
    let added: Vec<(Option<f64>, Option<f64>)> = match reference {
        None => Vec::new(),
        Some(reference) => samples
            .iter()
            .filter_map(|s| {
                let origin = reference.get(&s.part)?;
                let delta = |at: Option<Instant>, origin_at: Option<Instant>| {
                    Some(timeline.unix_ms(at?) - timeline.unix_ms(origin_at?))
                };
                Some((
                    delta(s.playlist, origin.playlist),
                    delta(s.last_byte, origin.last_byte),
                ))
            })
            .collect(),
    };
    let over_10ms = added
        .iter()
        .filter(|(playlist, part)| {
            [playlist, part]
                .iter()
                .any(|ms| ms.is_some_and(|ms| ms > 10.0))
        })
        .count();
    Row {
        target: target.to_owned(),
        viewers,
        samples: samples.len(),
        expected,
        errors: logs.iter().map(|log| log.errors.len()).sum(),
        playlist_added: Spread::of(added.iter().filter_map(|(playlist, _)| *playlist).collect()),
        part_added: Spread::of(added.iter().filter_map(|(_, part)| *part).collect()),
        over_10ms: (!added.is_empty()).then(|| over_10ms as f64 / added.len() as f64),
        playlist_age: age(|s| s.playlist),
        part_age: age(|s| s.last_byte),
    }
}

fn table(rows: &[Row]) -> String {
    let mut text = String::from(
        "| target | viewers | samples | errors | playlist added, median / p99 | part last byte added, median / p99 \
         | added > 10 ms | playlist since publication, median / p99 | part last byte since publication, median / p99 |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        let _ = writeln!(
            text,
            "| {} | {} | {}/{} | {} | {} | {} | {} | {} | {} |",
            r.target,
            r.viewers,
            r.samples,
            r.expected,
            r.errors,
            r.playlist_added.cell(),
            r.part_added.cell(),
            r.over_10ms
                .map_or("–".into(), |share| format!("{:.1} %", share * 100.0)),
            r.playlist_age.cell(),
            r.part_age.cell(),
        );
    }
    text
}

fn print_errors(phase: &PhaseLogs) {
    let named = std::iter::once(("origin (reference)", std::slice::from_ref(&phase.reference)))
        .chain(
            phase
                .targets
                .iter()
                .map(|(name, logs)| (*name, logs.as_slice())),
        );
    for (name, logs) in named {
        // The same failure usually hits many viewers at once: count each message.
        let mut errors: Vec<(&String, usize)> = Vec::new();
        for error in logs.iter().flat_map(|log| &log.errors) {
            match errors.iter_mut().find(|(seen, _)| *seen == error) {
                Some((_, count)) => *count += 1,
                None => errors.push((error, 1)),
            }
        }
        if errors.is_empty() {
            continue;
        }
        errors.sort_by_key(|(_, count)| std::cmp::Reverse(*count));
        let total: usize = errors.iter().map(|(_, count)| count).sum();
        println!("{name}: {total} errors (warm-up included), most frequent:");
        for (error, count) in errors.iter().take(5) {
            println!("  {count} × {error}");
        }
    }
}

/// Every sample of every phase, for looking at distributions by hand (a phase is named by its first part).
struct SamplesFile(File);

impl SamplesFile {
    fn create(path: &Path) -> std::io::Result<SamplesFile> {
        let mut file = File::create(path)?;
        writeln!(
            file,
            "first_part\tviewers\ttarget\tviewer\tmsn\tpart\tplaylist_since_publication_ms\tpart_since_publication_ms"
        )?;
        Ok(SamplesFile(file))
    }

    fn write_phase(
        &mut self,
        phase: &PhaseLogs,
        timeline: &Timeline,
        viewers: usize,
        span: Span,
    ) -> std::io::Result<()> {
        let named = std::iter::once(("reference", std::slice::from_ref(&phase.reference))).chain(
            phase
                .targets
                .iter()
                .map(|(name, logs)| (*name, logs.as_slice())),
        );
        let ms = |part, at: Option<Instant>| {
            at.map(|at| format!("{:.3}", timeline.since_published(part, at)))
                .unwrap_or_default()
        };
        for (name, logs) in named {
            for (index, log) in logs.iter().enumerate() {
                for s in log.samples.iter().filter(|s| span.contains(s.part)) {
                    writeln!(
                        self.0,
                        "{}\t{viewers}\t{name}\t{index}\t{}\t{}\t{}\t{}",
                        span.first.0,
                        s.part.msn(),
                        s.part.index(),
                        ms(s.part, s.playlist),
                        ms(s.part, s.last_byte),
                    )?;
                }
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------------------------
// CPU

/// CPU time used so far, by part of the benchmark, from /proc (Linux): where each part's time goes, and how much
/// the rest of the machine (builds on a shared box) took meanwhile.
struct CpuUse {
    /// (what, CPU time): this process's threads by runtime (viewers, reference, sim), then each server.
    parts: Vec<(String, Duration)>,
    /// Every CPU's busy time (user, nice, system, irq, softirq, steal).
    machine: Duration,
}

impl CpuUse {
    fn now(servers: &[Process]) -> CpuUse {
        let threads = |prefix: &str| -> Duration {
            let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
                return Duration::ZERO;
            };
            tasks
                .flatten()
                .filter_map(|task| proc_stat(&task.path().join("stat")))
                .filter(|stat| stat.name.starts_with(prefix))
                .map(|stat| stat.cpu)
                .sum()
        };
        let mut parts = vec![
            ("viewers".to_owned(), threads("viewers")),
            ("reference".to_owned(), threads("reference")),
            ("sim".to_owned(), threads("sim")),
        ];
        for server in servers {
            parts.push((server.name.to_owned(), process_tree_cpu(server.child.id())));
        }
        CpuUse {
            parts,
            machine: machine_busy(),
        }
    }

    fn since(&self, before: &CpuUse) -> CpuUse {
        CpuUse {
            parts: self
                .parts
                .iter()
                .zip(&before.parts)
                .map(|((name, after), (_, before))| (name.clone(), after.saturating_sub(*before)))
                .collect(),
            machine: self.machine.saturating_sub(before.machine),
        }
    }

    /// "CPU per part: viewers 3.1 ms, …; other processes 40 % of a core", for a phase of `elapsed`.
    fn per_part(&self, elapsed: Duration) -> String {
        let parts = elapsed.as_secs_f64() / sim::PART_INTERVAL.as_secs_f64();
        let mut text = String::from("CPU per part:");
        for (name, cpu) in &self.parts {
            let _ = write!(text, " {name} {:.1} ms,", cpu.as_secs_f64() * 1e3 / parts);
        }
        let ours: Duration = self.parts.iter().map(|(_, cpu)| *cpu).sum();
        let others = self.machine.saturating_sub(ours).as_secs_f64() / elapsed.as_secs_f64();
        let _ = write!(text, " other processes {:.0} % of a core", others * 100.0);
        text
    }
}

struct ProcStat {
    name: String,
    parent: u32,
    cpu: Duration,
}

/// A process's or thread's `stat`: name, parent and user + system time.
fn proc_stat(path: &Path) -> Option<ProcStat> {
    let text = std::fs::read_to_string(path).ok()?;
    // "pid (name) state ppid … utime stime …": the name may hold spaces and parentheses, so split at the last ')'.
    let (head, rest) = text.rsplit_once(')')?;
    let name = head.split_once('(')?.1.to_owned();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i)?.parse::<u64>().ok();
    // Fields 4, 14 and 15 of stat(5); `fields` starts at field 3 (state).
    let cpu = ticks(11)? + ticks(12)?;
    Some(ProcStat {
        name,
        parent: fields.get(1)?.parse().ok()?,
        cpu: ticks_to_duration(cpu),
    })
}

/// CPU time of a process and its children (nginx's master and workers).
fn process_tree_cpu(pid: u32) -> Duration {
    let own =
        proc_stat(&PathBuf::from(format!("/proc/{pid}/stat"))).map_or(Duration::ZERO, |s| s.cpu);
    let Ok(processes) = std::fs::read_dir("/proc") else {
        return own;
    };
    let children: Duration = processes
        .flatten()
        .filter(|entry| {
            entry
                .file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|entry| proc_stat(&entry.path().join("stat")))
        .filter(|stat| stat.parent == pid)
        .map(|stat| stat.cpu)
        .sum();
    own + children
}

/// Busy time of all CPUs, from the first line of /proc/stat.
fn machine_busy() -> Duration {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<u64> = text
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|t| t.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal: everything but idle and iowait.
    let busy: u64 = [0, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|&i| ticks.get(i))
        .sum();
    ticks_to_duration(busy)
}

/// /proc counts CPU time in clock ticks: `USER_HZ`, 100 on Linux whatever the kernel's own tick rate.
fn ticks_to_duration(ticks: u64) -> Duration {
    Duration::from_millis(ticks * 10)
}

// ---------------------------------------------------------------------------------------------------------------
// The servers under test

/// A server this benchmark started, stopped when dropped: SIGTERM (the relay shuts down, nginx's master stops its
/// workers), then SIGKILL if it is still there after a few seconds.
struct Process {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Process {
    fn spawn(name: &'static str, command: &mut Command, log: PathBuf) -> Result<Process, String> {
        let output = File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let errors = output.try_clone().map_err(|e| e.to_string())?;
        let child = command
            .stdin(Stdio::null())
            .stdout(output)
            .stderr(errors)
            .spawn()
            .map_err(|e| format!("{name} did not start: {e}"))?;
        Ok(Process { name, child, log })
    }

    /// Waits until `addr` accepts connections; fails if the process exits first.
    async fn wait_listening(&mut self, addr: &str) -> Result<(), String> {
        let deadline = Instant::now() + STARTUP_PATIENCE;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "{} exited ({status}): see {}",
                    self.name,
                    self.log_tail()
                ));
            }
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(format!("{} is not listening on {addr}", self.name))
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }

    /// What the server logged (warnings and errors), if anything.
    fn print_log_tail(&self) {
        let tail = self.log_tail();
        if !tail.trim().is_empty() {
            println!("\n{} log (last lines):\n{tail}", self.name);
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free port on loopback, for a server that must be told its address.
fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(listener.local_addr().map_err(|e| e.to_string())?.port())
}

/// The relay binary (`hls-relay serve`), configured through the environment as an operator would: the simulator
/// as its Stream API, default cache and upstream settings, a runtime worker per CPU. Returns the call's entry URL.
async fn start_relay(sim: &SimHandle, dir: &Path) -> Result<(Process, Url), String> {
    let addr = format!("127.0.0.1:{}", free_port()?);
    let mut command = Command::new(env!("CARGO_BIN_EXE_hls-relay"));
    command
        .arg("serve")
        .env_remove("RUST_LOG")
        .env("HLS_RELAY_SERVER__LISTEN", &addr)
        .env("HLS_RELAY_SERVER__URL_KEY", "part-latency-bench-url-key")
        .env("HLS_RELAY_STREAM__BASE_URL", sim.base_url())
        .env("HLS_RELAY_LOG__LEVEL", "warn")
        .env("STREAM_API_KEY", sim.api_key())
        .env("STREAM_API_SECRET", sim.api_secret());
    let mut relay = Process::spawn("relay", &mut command, dir.join("relay.log"))?;
    relay.wait_listening(&addr).await?;
    let entry = format!("http://{addr}/hls/{CALL_TYPE}/{CALL_ID}/index.m3u8");
    Ok((relay, Url::parse(&entry).map_err(|e| e.to_string())?))
}

/// nginx in front of the origin (see `nginx_conf`). Returns the master playlist's URL through it.
async fn start_nginx(
    binary: &Path,
    dir: &Path,
    origin_master: &Url,
) -> Result<(Process, Url), String> {
    let origin = format!(
        "{}:{}",
        origin_master.host_str().unwrap_or("127.0.0.1"),
        origin_master.port_or_known_default().unwrap_or(80)
    );
    let addr = format!("127.0.0.1:{}", free_port()?);
    let nginx_dir = dir.join("nginx");
    for sub in ["", "cache", "tmp"] {
        let path = nginx_dir.join(sub);
        std::fs::create_dir_all(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        set_mode(&path, 0o777)?;
    }
    let conf = nginx_dir.join("nginx.conf");
    std::fs::write(&conf, nginx_conf(&nginx_dir, &addr, &origin))
        .map_err(|e| format!("{}: {e}", conf.display()))?;
    let mut command = Command::new(binary);
    command
        .arg("-p")
        .arg(&nginx_dir)
        .arg("-c")
        .arg(&conf)
        .arg("-e")
        .arg(nginx_dir.join("error.log"))
        .args(["-g", "daemon off;"]);
    let mut nginx = Process::spawn("nginx", &mut command, nginx_dir.join("error.log"))?;
    nginx.wait_listening(&addr).await?;
    let mut master = origin_master.clone();
    let port = addr.rsplit_once(':').and_then(|(_, p)| p.parse().ok());
    master.set_port(port).map_err(|()| "nginx's port")?;
    Ok((nginx, master))
}

/// nginx as an LL-HLS-aware cache, as `benches/load/conf/cache.nginx.conf.in` sets it up for the load benchmark
/// (2 workers, keep-alive to the origin, `proxy_cache` with the cache lock, stale-while-updating for playlists),
/// with what LL-HLS needs on top:
///
/// - the cache key keeps the query (nginx's default, spelled out): each `_HLS_msn`/`_HLS_part` reload is its own
///   object, and the origin's `sig` parameters are kept;
/// - freshness comes from the origin's `Cache-Control` (playlists 1 s, blocking reloads 12 s, media a day), which
///   nginx honours by default: no `proxy_cache_valid` for 200s overrides it;
/// - `proxy_read_timeout` and the lock timeouts outlast a blocking request's longest hold (6 s at the origin).
///
/// Waiters on a cache lock are not woken when the fill completes: nginx polls them every 500 ms. That is nginx's
/// design, and exactly what LL-HLS exposes; the config cannot change it.
fn nginx_conf(dir: &Path, listen: &str, origin: &str) -> String {
    let dir = dir.display();
    format!(
        r#"# Generated by benches/part_latency.rs.
worker_processes 2;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;

events {{
    worker_connections 4096;
}}

http {{
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 65s;
    keepalive_requests 1000000;
    access_log off;

    client_body_temp_path {dir}/tmp/client;
    proxy_temp_path       {dir}/tmp/proxy;
    fastcgi_temp_path     {dir}/tmp/fastcgi;
    uwsgi_temp_path       {dir}/tmp/uwsgi;
    scgi_temp_path        {dir}/tmp/scgi;

    proxy_cache_path {dir}/cache levels=1:2 keys_zone=hls:16m max_size=1g inactive=10m use_temp_path=off;

    upstream origin {{
        server {origin};
        keepalive 64;
    }}

    server {{
        listen {listen} backlog=4096;

        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host $host;
        proxy_buffers 64 16k;
        proxy_read_timeout 10s;            # blocking reloads are held up to 6 s

        proxy_cache hls;
        proxy_cache_key $scheme$proxy_host$uri$is_args$args;
        proxy_cache_lock on;               # one origin request per object
        proxy_cache_lock_timeout 10s;
        proxy_cache_lock_age 10s;
        proxy_cache_revalidate on;
        proxy_cache_use_stale updating error timeout http_500 http_502 http_503 http_504;
        proxy_cache_background_update on;
        proxy_cache_valid 404 1s;
        add_header X-Cache $upstream_cache_status always;

        location / {{
            proxy_pass http://origin;
        }}
    }}
}}
"#
    )
}
