//! `bdh data fetch`: tiny Shakespeare, the text the published numbers were
//! measured on, downloaded only when asked and checked before it is written.

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;

/// Where tiny Shakespeare is published (Karpathy's char-rnn).
const URL: &str = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt";
/// Where it goes, relative to the current directory; the docs' commands read it there.
const DEST: &str = "data/tinyshakespeare.txt";
/// Its SHA-256.
const SHA256: &str = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed";
/// Its size in bytes.
const SIZE: u64 = 1_115_394;
/// Most bytes read from the server (or from a file already at the destination):
/// a few MiB past the file, so a wrong file is read whole to say what it is, and
/// an endless one is cut off.
pub const MAX_BYTES: u64 = SIZE + (4 << 20);
/// Longest a connection may take to open, and a download to finish.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const TIMEOUT: Duration = Duration::from_secs(600);

/// Data for `bdh train --data`, `compare --data`, `tokenizer train` and `eval`.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Download tiny Shakespeare (1.1 MB, the text of the published numbers) to
    /// data/tinyshakespeare.txt and check its SHA-256. Nothing else downloads.
    Fetch(FetchArgs),
}

#[derive(clap::Args)]
struct FetchArgs {
    /// Where to download from (a mirror of the same file).
    #[arg(long, default_value = URL)]
    url: String,
    /// Where to write the text; a file already there is kept if it differs.
    #[arg(long, default_value = DEST, value_name = "FILE")]
    out: PathBuf,
    /// The SHA-256 the download must have, for a mirror of another file (64 hex digits).
    #[arg(long, value_name = "HEX", hide = true)]
    sha256: Option<String>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let Command::Fetch(args) = args.command;
    fetch(&args)?;
    Ok(ExitCode::SUCCESS)
}

/// The file that is wanted: its SHA-256 (lowercase hex) and, for tiny
/// Shakespeare, its size.
struct Wanted {
    sha256: String,
    size: Option<u64>,
}

impl Wanted {
    fn of(args: &FetchArgs) -> anyhow::Result<Self> {
        let Some(hex) = &args.sha256 else { return Ok(Wanted { sha256: SHA256.into(), size: Some(SIZE) }) };
        anyhow::ensure!(
            hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
            "--sha256 {hex}: give the 64 hex digits of a SHA-256"
        );
        Ok(Wanted { sha256: hex.to_ascii_lowercase(), size: None })
    }

    /// Whether `bytes` are the file.
    fn matches(&self, bytes: &[u8]) -> bool {
        sha256(bytes) == self.sha256 && self.size.is_none_or(|n| n == bytes.len() as u64)
    }

    /// What the file is, for messages.
    fn describe(&self) -> String {
        match self.size {
            Some(n) => format!("{n} bytes, SHA-256 {}", self.sha256),
            None => format!("SHA-256 {}", self.sha256),
        }
    }
}

fn fetch(args: &FetchArgs) -> anyhow::Result<()> {
    let wanted = Wanted::of(args)?;
    let out = &args.out;
    if existing(out, &wanted)? {
        println!("{} is already there ({}): nothing to do", out.display(), wanted.describe());
        return Ok(());
    }
    eprintln!("downloading {} to {}", args.url, out.display());
    let bytes = download(&args.url, &offline_advice(out))?;
    anyhow::ensure!(
        wanted.matches(&bytes),
        "{} sent {} bytes with SHA-256 {}, not the file expected ({}): nothing was written; \
         try again later or from a mirror (--url)",
        args.url,
        bytes.len(),
        sha256(&bytes),
        wanted.describe()
    );
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating directory {}", dir.display()))?;
    }
    bdh::io::write_atomic_new(out, &bytes).with_context(|| {
        format!("{} was made while downloading; it is kept, and the download is not written", out.display())
    })?;
    println!("wrote {} ({})", out.display(), wanted.describe());
    Ok(())
}

/// Whether `out` already holds the wanted file; an error if it holds anything else.
fn existing(out: &Path, wanted: &Wanted) -> anyhow::Result<bool> {
    match std::fs::symlink_metadata(out) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e).with_context(|| format!("reading {}", out.display())),
        Ok(_) => {}
    }
    let kept = "it is kept as it is: move it away, or give --out another path";
    let bytes = bdh::io::read_bounded(out, MAX_BYTES).map_err(anyhow::Error::from).with_context(|| {
        format!("{} exists and is not the file wanted ({}); {kept}", out.display(), wanted.describe())
    })?;
    anyhow::ensure!(
        wanted.matches(&bytes),
        "{} exists and is not the file wanted: it has {} bytes with SHA-256 {}, not {}; {kept}",
        out.display(),
        bytes.len(),
        sha256(&bytes),
        wanted.describe()
    );
    Ok(true)
}

/// What to do without a network, said after a download that failed.
fn offline_advice(out: &Path) -> String {
    format!(
        "Without a network, any UTF-8 text file works: give it with --data FILE \
         (bdh train, compare, eval, tokenizer train), though the published numbers, measured on tiny \
         Shakespeare, will not be comparable; or copy tiny Shakespeare to {} from elsewhere and run \
         this again to check it",
        out.display()
    )
}

/// The body of `url`, read to at most [`MAX_BYTES`]; `advice` follows a failure
/// to connect or to read.
fn download(url: &str, advice: &str) -> anyhow::Result<Vec<u8>> {
    let failed = |e: ureq::Error| match e {
        ureq::Error::StatusCode(code) => {
            anyhow::anyhow!(
                "{url} answered HTTP {code}: try again later, or a mirror of the same file (--url)\n{advice}"
            )
        }
        e => anyhow::anyhow!("downloading {url}: {e}\n{advice}"),
    };
    let config =
        ureq::Agent::config_builder().timeout_connect(Some(CONNECT_TIMEOUT)).timeout_global(Some(TIMEOUT)).build();
    let agent = ureq::Agent::new_with_config(config);
    let response = agent.get(url).call().map_err(failed)?;
    let body = response.into_body();
    let declared = body.content_length();
    if let Some(n) = declared.filter(|&n| n > MAX_BYTES) {
        anyhow::bail!("{url} would send {n} bytes, past the {MAX_BYTES} this reads: refused, nothing was written");
    }
    let mut reader = body.into_reader().take(MAX_BYTES + 1);
    let mut bytes = Vec::with_capacity(declared.unwrap_or(SIZE) as usize);
    let mut progress = Progress::new(declared);
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        let n = reader.read(&mut chunk).map_err(|e| failed(ureq::Error::Io(e)))?;
        if n == 0 {
            break;
        }
        bytes.extend_from_slice(&chunk[..n]);
        progress.show(bytes.len() as u64);
    }
    progress.done();
    anyhow::ensure!(
        bytes.len() as u64 <= MAX_BYTES,
        "{url} sent more than {MAX_BYTES} bytes: refused, nothing was written"
    );
    Ok(bytes)
}

/// Bytes received so far, shown on a terminal once a download takes a while.
struct Progress {
    start: Instant,
    last: Option<Instant>,
    total: Option<u64>,
    terminal: bool,
}

impl Progress {
    fn new(total: Option<u64>) -> Self {
        Progress { start: Instant::now(), last: None, total, terminal: std::io::stderr().is_terminal() }
    }

    fn show(&mut self, got: u64) {
        let now = Instant::now();
        let due =
            self.last.map_or(now - self.start >= Duration::from_secs(1), |t| now - t >= Duration::from_millis(250));
        if self.terminal && due {
            self.last = Some(now);
            let of = self.total.map_or(String::new(), |t| format!(" of {} KB", t / 1000));
            eprint!("\r{} KB{of}", got / 1000);
            let _ = std::io::stderr().flush();
        }
    }

    fn done(&self) {
        if self.last.is_some() {
            eprintln!();
        }
    }
}

/// SHA-256 of `bytes`, as lowercase hex.
fn sha256(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes).as_ref().iter().map(|b| format!("{b:02x}")).collect()
}
