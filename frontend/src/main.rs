//! husk: the unprivileged command line. It parses options, reads the image's
//! metadata, computes the container's environment and identity, and hands the
//! setuid starter one request on a pipe.

#![deny(unsafe_code)]

/// `println!` that ends husk quietly when the reader has gone away
/// (`husk inspect IMG | head -1`) instead of panicking.
macro_rules! say {
    ($($arg:tt)*) => { $crate::say_line(format_args!($($arg)*)) };
}

mod cache;
mod convert;
mod env;
mod image;
mod launch;
mod layers;
mod oci;
mod progress;
mod registry;
mod scratch;
mod sif;
// A complete writer; the converter does not use every call of its API.
#[allow(dead_code)]
mod squashfs;
// The only module allowed `unsafe`: one small wrapper per system call.
#[allow(unsafe_code)]
mod sys;
mod unsquash;

use anyhow::{Context, Result};
use clap::builder::BoolishValueParser;
use clap::{Args, Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "husk",
    version,
    about = "Run SIF, squashfs and directory images as yourself, without root",
    disable_help_subcommand = false
)]
struct Cli {
    /// No progress lines (they appear only on a terminal anyway)
    #[arg(short, long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Args, Clone, Default)]
pub struct RunOpts {
    /// Bind a host path: SRC[:DST[:ro|rw]], comma-separated lists allowed
    #[arg(short = 'B', long = "bind", value_name = "SPEC")]
    pub bind: Vec<String>,
    /// Bind as Docker does: type=bind,source=SRC,destination=DST[,readonly]
    #[arg(long, value_name = "SPEC")]
    pub mount: Vec<String>,
    /// Start in DIR inside the container (an error if it does not exist)
    #[arg(long, value_name = "DIR", env = "HUSK_PWD")]
    pub pwd: Option<String>,
    /// Do not bind the home directory
    #[arg(long, env = "HUSK_NO_HOME", value_parser = BoolishValueParser::new())]
    pub no_home: bool,
    /// Contain: an empty home, fresh /tmp and /var/tmp, a minimal /dev, the
    /// current directory not bound; start in the home
    #[arg(short = 'c', long, env = "HUSK_CONTAIN", value_parser = BoolishValueParser::new())]
    pub contain: bool,
    /// --contain, --cleanenv, --pid and --ipc at once
    #[arg(short = 'C', long, env = "HUSK_CONTAINALL", value_parser = BoolishValueParser::new())]
    pub containall: bool,
    /// Docker-like: --containall --writable-tmpfs --no-init, and start in
    /// the image's WORKDIR
    #[arg(long, env = "HUSK_COMPAT", value_parser = BoolishValueParser::new())]
    pub compat: bool,
    /// A new PID namespace, with a small init as PID 1
    #[arg(short = 'p', long, env = "HUSK_PID", value_parser = BoolishValueParser::new())]
    pub pid: bool,
    /// With --pid: run the command itself as PID 1, without husk's init
    #[arg(long, env = "HUSK_NO_INIT", value_parser = BoolishValueParser::new())]
    pub no_init: bool,
    /// /tmp and /var/tmp (and with --contain the home) kept in DIR instead
    #[arg(short = 'W', long, value_name = "DIR", env = "HUSK_WORKDIR")]
    pub workdir: Option<String>,
    /// Use SRC as the home directory, at DST inside (default: SRC)
    #[arg(short = 'H', long, value_name = "SRC[:DST]", env = "HUSK_HOME")]
    pub home: Option<String>,
    /// Leave out the host's environment (TERM and proxy variables pass; LANG=C)
    #[arg(short = 'e', long, env = "HUSK_CLEANENV", value_parser = BoolishValueParser::new())]
    pub cleanenv: bool,
    /// Set a variable inside: NAME=value, or NAME for the host's value (repeatable)
    #[arg(long = "env", value_name = "NAME=VALUE")]
    pub env: Vec<String>,
    /// Read NAME=value lines from FILE (Docker's format: verbatim values, # comments)
    #[arg(long, value_name = "FILE", env = "HUSK_ENV_FILE")]
    pub env_file: Option<std::path::PathBuf>,
    /// A new IPC namespace
    #[arg(short = 'i', long, env = "HUSK_IPC", value_parser = BoolishValueParser::new())]
    pub ipc: bool,
    /// A new network namespace with only the loopback interface, up
    #[arg(short = 'n', long, env = "HUSK_NET", value_parser = BoolishValueParser::new())]
    pub net: bool,
    /// A new UTS namespace (own host name)
    #[arg(long, env = "HUSK_UTS", value_parser = BoolishValueParser::new())]
    pub uts: bool,
    /// The container's host name (implies --uts)
    #[arg(long, value_name = "NAME", env = "HUSK_HOSTNAME")]
    pub hostname: Option<String>,
    /// Let the container write to its root: the writes go to a tmpfs (64 MiB)
    /// and are gone at exit
    #[arg(long, env = "HUSK_WRITABLE_TMPFS", value_parser = BoolishValueParser::new())]
    pub writable_tmpfs: bool,
    /// Run without the setuid starter, in a user namespace of your own (SIF
    /// and squashfs images through squashfuse)
    #[arg(short = 'u', long, env = "HUSK_USERNS", value_parser = BoolishValueParser::new())]
    pub userns: bool,
    /// Extract a SIF or squashfs image into a temporary directory and run
    /// that (removed at exit): no FUSE or loop device needed
    #[arg(long, env = "HUSK_UNSQUASH", value_parser = BoolishValueParser::new())]
    pub unsquash: bool,
    /// For an image source: pick this architecture from a multi-architecture
    /// image (e.g. arm64, arm/v7)
    #[arg(long)]
    pub arch: Option<String>,
    /// Allow plain HTTP to a docker:// registry (always allowed on the loopback)
    #[arg(long)]
    pub insecure: bool,
}

impl RunOpts {
    /// The options --compat and --containall stand for, spelled out.
    pub fn expanded(&self) -> RunOpts {
        let mut o = self.clone();
        // Binds from the environment come on top of -B, as Apptainer adds
        // its own variables' binds (which Apptainer users have set).
        for var in [
            "HUSK_BIND",
            "APPTAINER_BIND",
            "APPTAINER_BINDPATH",
            "SINGULARITY_BIND",
            "SINGULARITY_BINDPATH",
        ] {
            if let Some(v) = std::env::var(var).ok().filter(|v| !v.is_empty()) {
                o.bind.push(v);
            }
        }
        if o.compat {
            o.containall = true;
            o.writable_tmpfs = true;
            o.no_init = true;
        }
        if o.containall {
            o.contain = true;
            o.cleanenv = true;
            o.pid = true;
            o.ipc = true;
        }
        o
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run a command in the container (husk's options go before IMAGE)
    Exec {
        #[command(flatten)]
        opts: RunOpts,
        /// SIF file, squashfs file or directory, then the command and its
        /// arguments, passed verbatim
        #[arg(
            required = true,
            trailing_var_arg = true,
            num_args = 1..,
            value_name = "IMAGE COMMAND [ARGS]"
        )]
        rest: Vec<String>,
    },
    /// Run the image's default program (runscript, or ENTRYPOINT + CMD)
    Run {
        #[command(flatten)]
        opts: RunOpts,
        /// The image, then arguments that replace the image's CMD
        #[arg(
            required = true,
            trailing_var_arg = true,
            num_args = 1..,
            value_name = "IMAGE [ARGS]"
        )]
        rest: Vec<String>,
    },
    /// Start an interactive shell in the container
    Shell {
        #[command(flatten)]
        opts: RunOpts,
        /// The image, then arguments for the shell (e.g. -c 'echo hi')
        #[arg(required = true, trailing_var_arg = true, num_args = 1.., value_name = "IMAGE [ARGS]")]
        rest: Vec<String>,
    },
    /// Show an image's metadata and what `run` would do
    Inspect {
        /// Print JSON
        #[arg(long)]
        json: bool,
        /// For an image source: the architecture to pick
        #[arg(long)]
        arch: Option<String>,
        /// Allow plain HTTP to a docker:// registry (always allowed on the loopback)
        #[arg(long)]
        insecure: bool,
        image: String,
    },
    /// Convert an image source (docker://, oci:, oci-archive:, docker-archive:) into a SIF file
    Build {
        #[command(flatten)]
        opts: BuildOpts,
        /// The SIF file to write
        dest: std::path::PathBuf,
        /// docker://[REGISTRY/]NAME[:TAG|@DIGEST], oci:DIR[:TAG],
        /// oci-archive:FILE[:TAG] or docker-archive:FILE[:REF]
        source: String,
    },
    /// Fetch and convert an image source into a SIF file (default name from the source)
    Pull {
        #[command(flatten)]
        opts: BuildOpts,
        /// The SIF file to write, then the source; or just the source
        #[arg(num_args = 1..=2, required = true, value_name = "[DEST] SOURCE")]
        args: Vec<String>,
    },
    /// Registry credentials, for docker:// sources
    Registry {
        #[command(subcommand)]
        action: RegistryCommand,
    },
    /// The image cache: list or clean
    Cache {
        #[arg(value_parser = ["list", "clean"])]
        action: String,
    },
    /// Print husk's version
    Version,
}

#[derive(Subcommand)]
enum RegistryCommand {
    /// Check credentials with the registry and keep them for husk
    /// ($XDG_CONFIG_HOME/husk/auth.json, mode 0600)
    Login {
        #[arg(short, long)]
        username: Option<String>,
        /// Read the password from standard input
        #[arg(long)]
        password_stdin: bool,
        /// Use plain HTTP (always so on the loopback)
        #[arg(long)]
        insecure: bool,
        /// host[:port]
        registry: String,
    },
    /// Forget the credentials kept for a registry
    Logout { registry: String },
}

#[derive(Args, Clone)]
pub struct BuildOpts {
    /// Squashfs compression: zstd (fast) or gzip (for the oldest kernels)
    #[arg(long, default_value = "zstd", value_parser = ["zstd", "gzip"])]
    pub compression: String,
    /// Pick this architecture from a multi-architecture image (e.g. arm64, arm/v7)
    #[arg(long)]
    pub arch: Option<String>,
    /// Replace DEST if it exists
    #[arg(short = 'F', long)]
    pub force: bool,
    /// Allow plain HTTP to a docker:// registry (always allowed on the loopback)
    #[arg(long)]
    pub insecure: bool,
}

impl BuildOpts {
    fn convert_options(&self) -> convert::Options {
        let compression = match self.compression.as_str() {
            "gzip" => squashfs::Compression::Gzip { level: 6 },
            _ => squashfs::Compression::Zstd { level: 3 },
        };
        convert::Options { compression, platform: oci::Platform::host(self.arch.as_deref()) }
    }

    /// The source, and DEST checked not to be in the way.
    fn source(&self, source: &str, dest: &std::path::Path) -> Result<oci::Source> {
        let src = oci::Source::parse(source)?.ok_or_else(|| {
            anyhow::anyhow!("source {source}: not docker://, oci:, oci-archive: or docker-archive:")
        })?;
        if dest.is_dir() {
            anyhow::bail!("{}: is a directory; name the SIF file to write", dest.display());
        }
        if dest.exists() && !self.force {
            anyhow::bail!("{} exists (use --force to replace it)", dest.display());
        }
        // Before any download or conversion: can the SIF be written there?
        let probe = scratch::Scratch::new(temp_beside(dest));
        std::fs::OpenOptions::new().write(true).create_new(true).open(probe.path()).map_err(
            |e| anyhow::anyhow!("{}: cannot write there: {}", dest.display(), describe(&e)),
        )?;
        Ok(src.insecure(self.insecure))
    }
}

/// The name a SIF is written under before it is renamed to `dest`.
pub fn temp_beside(dest: &std::path::Path) -> std::path::PathBuf {
    dest.with_file_name(format!(
        ".{}.husk-tmp-{}",
        dest.file_name().map(|n| n.to_string_lossy()).unwrap_or_default(),
        std::process::id()
    ))
}

/// `name_tag.sif` from a source reference.
fn default_name(source: &str) -> String {
    let rest = source.split_once(':').map_or(source, |(_, r)| r);
    let rest = rest.trim_end_matches('/');
    let base = rest.rsplit('/').next().unwrap_or(rest);
    let base = base.split('@').next().unwrap_or(base);
    let name: String = base
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '_' })
        .collect();
    let mut name = name.trim_end_matches(".tar").trim_start_matches('.').to_string();
    // As Apptainer names them: docker://alpine gives alpine_latest.sif.
    let last = rest.rsplit('/').next().unwrap_or(rest);
    if source.starts_with("docker://") && !last.contains([':', '@']) && !name.is_empty() {
        name.push_str("_latest");
    }
    format!("{}.sif", if name.is_empty() { "image".to_string() } else { name })
}

fn pull(opts: &BuildOpts, args: &[String]) -> Result<()> {
    let (dest, source) = match args {
        [d, s] => (std::path::PathBuf::from(d), s.as_str()),
        [s] => (std::path::PathBuf::from(default_name(s)), s.as_str()),
        _ => anyhow::bail!("pull takes [DEST] SOURCE"),
    };
    let src = opts.source(source, &dest)?;
    let cached = cache::sif_for(&src, source, &opts.convert_options())?;
    let tmp = temp_beside(&dest);
    let guard = scratch::Scratch::new(tmp.clone());
    std::fs::copy(&cached, &tmp).with_context(|| format!("write {}", dest.display()))?;
    std::fs::rename(&tmp, &dest).with_context(|| format!("write {}", dest.display()))?;
    guard.keep();
    eprintln!("husk: wrote {}", dest.display());
    Ok(())
}

fn build(opts: &BuildOpts, dest: &std::path::Path, source: &str) -> Result<()> {
    let src = opts.source(source, dest)?;
    let built = convert::build(&src, source, dest, &opts.convert_options())?;
    eprintln!("husk: wrote {} ({})", dest.display(), built.digest);
    Ok(())
}

/// Split `IMAGE [--] ARGS...`: everything after the image belongs to the
/// container, except one `--` right after it.
/// IMAGE and what follows it. (Unknown options never get here: clap
/// reports them, see `real_main`.)
fn image_and_args(mut rest: Vec<String>) -> (String, Vec<String>) {
    let image = rest.remove(0);
    if rest.first().is_some_and(|a| a == "--") {
        rest.remove(0);
    }
    (image, rest)
}

/// A lower-case reason without Rust's "(os error N)" suffix.
pub fn describe(e: &std::io::Error) -> String {
    let s = e.to_string();
    let s = s.split(" (os error").next().unwrap_or(&s);
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => String::new(),
    }
}

fn real_main() -> Result<ExitCode> {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) if !e.use_stderr() => {
            e.print()?;
            return Ok(ExitCode::SUCCESS);
        }
        Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            // `husk` or `husk registry` alone: the help, on stderr.
            e.print()?;
            return Ok(ExitCode::from(255));
        }
        Err(e) if e.kind() == clap::error::ErrorKind::UnknownArgument => {
            use clap::error::{ContextKind, ContextValue};
            let arg = match e.get(ContextKind::InvalidArg) {
                Some(ContextValue::String(a)) => a.clone(),
                _ => "?".into(),
            };
            let cmd = std::env::args().nth(1).unwrap_or_default();
            let hint = if ["exec", "run", "shell"].contains(&cmd.as_str()) {
                "husk's options go before IMAGE; "
            } else {
                ""
            };
            anyhow::bail!("{cmd}: unknown option {arg} ({hint}see husk {cmd} --help)");
        }
        Err(e) => {
            // clap's message, up to the usage, on one line.
            let text = e.render().to_string();
            let msg: Vec<&str> = text
                .lines()
                .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more"))
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect();
            let msg = msg.join(" ");
            let msg = msg.strip_prefix("error: ").unwrap_or(&msg);
            anyhow::bail!("{msg} (see husk --help)");
        }
    };
    progress::set_quiet(cli.quiet);
    match cli.cmd {
        Command::Exec { opts, rest } => {
            let (image, command) = image_and_args(rest);
            if command.is_empty() {
                anyhow::bail!("exec: no COMMAND after IMAGE ('{image}' was taken as the image)");
            }
            launch::exec(&opts, &image, launch::Action::Exec(command))
        }
        Command::Run { opts, rest } => {
            let (image, args) = image_and_args(rest);
            launch::exec(&opts, &image, launch::Action::Run(args))
        }
        Command::Shell { opts, rest } => {
            let (image, args) = image_and_args(rest);
            launch::exec(&opts, &image, launch::Action::Shell(args))
        }
        Command::Inspect { json, arch, insecure, image } => {
            launch::inspect(&image, json, arch.as_deref(), insecure).map(|_| ExitCode::SUCCESS)
        }
        Command::Pull { opts, args } => pull(&opts, &args).map(|_| ExitCode::SUCCESS),
        Command::Registry { action } => match action {
            RegistryCommand::Login { username, password_stdin, insecure, registry } => {
                registry::login(&registry, username.as_deref(), password_stdin, insecure)
            }
            RegistryCommand::Logout { registry } => registry::logout(&registry),
        }
        .map(|_| ExitCode::SUCCESS),
        Command::Cache { action } => {
            if action == "list" { cache::list() } else { cache::clean() }.map(|_| ExitCode::SUCCESS)
        }
        Command::Build { opts, dest, source } => {
            build(&opts, &dest, &source).map(|_| ExitCode::SUCCESS)
        }
        Command::Version => {
            say!("husk version {}", env!("CARGO_PKG_VERSION"));
            Ok(ExitCode::SUCCESS)
        }
    }
}

pub fn say_line(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|_| out.write_all(b"\n")) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("husk: write to standard output: {e}");
        std::process::exit(255);
    }
}

fn main() -> ExitCode {
    match real_main() {
        Ok(code) => code,
        Err(e) => {
            // One line: the chain joined, outermost first.
            // System errors in husk's words: "no such file or directory",
            // without Rust's "(os error 2)".
            let msg: Vec<String> = e
                .chain()
                .map(|c| match c.downcast_ref::<std::io::Error>() {
                    Some(io) => describe(io),
                    None => c.to_string(),
                })
                .collect();
            eprintln!("husk: {}", msg.join(": "));
            ExitCode::from(255)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::default_name;

    #[test]
    fn pull_names_files_as_apptainer_does() {
        assert_eq!(default_name("docker://alpine"), "alpine_latest.sif");
        assert_eq!(default_name("docker://alpine:3.20"), "alpine_3.20.sif");
        assert_eq!(default_name("docker://127.0.0.1:5000/lab/tool"), "tool_latest.sif");
        assert_eq!(default_name("docker://lab/tool@sha256:ab12"), "tool.sif");
        assert_eq!(default_name("oci-archive:/x/tool.tar"), "tool.sif");
    }
}
