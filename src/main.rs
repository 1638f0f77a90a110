use clap::Parser;
use std::process::ExitCode;
use wstrace::cli::{Cli, Command};

// jemalloc, as Vector uses: fewer instructions per session than glibc's
// malloc at the same idle memory (BENCHMARKS.md, seventh round).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read before `main`. Memory freed after a burst
/// (large messages, a reconnect storm) goes back to the system within
/// about a second, also when the server then sits idle: a background
/// thread purges, rather than the next allocation. `_RJEM_MALLOC_CONF`
/// overrides these.
const JEMALLOC_OPTIONS: &std::ffi::CStr =
    c"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0";

#[repr(transparent)]
struct JemallocOptions(*const std::ffi::c_char);
// SAFETY: a pointer to a constant string, never written.
unsafe impl Sync for JemallocOptions {}

#[unsafe(export_name = "_rjem_malloc_conf")]
static JEMALLOC_CONF: JemallocOptions = JemallocOptions(JEMALLOC_OPTIONS.as_ptr());

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            use clap::error::ErrorKind;
            let _ = error.print();
            // Help and version are answers; anything else is bad usage,
            // with one exit code for every subcommand (sysexits' EX_USAGE),
            // apart from "cannot connect" (2).
            return match error.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => ExitCode::SUCCESS,
                _ => ExitCode::from(wstrace::tools::client::EXIT_USAGE),
            };
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("wstrace: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    // Every command's failure: who says it, its exit code, and why.
    let outcome: Result<(), (&str, u8, String)> = match cli.command {
        Command::Serve(args) => runtime
            .block_on(wstrace::app::serve(args))
            .map_err(|e| ("wstrace", e.exit_code(), e.to_string())),
        Command::Health { url, ca_cert } => runtime
            .block_on(health(&url, ca_cert.as_deref()))
            .map_err(|(code, e)| ("wstrace health", code, e)),
        Command::Doctor(args) => runtime
            .block_on(wstrace::tools::doctor::run(args))
            .map_err(|e| ("wstrace doctor", e.exit_code(), e.to_string())),
        Command::Client(args) => {
            let result = runtime.block_on(wstrace::tools::client::run(args));
            // The line editor may still hold the terminal in raw mode.
            wstrace::tools::client::restore_terminal();
            result.map_err(|e| ("wstrace client", e.exit_code(), e.to_string()))
        }
        Command::Load(args) => match runtime.block_on(wstrace::tools::load::run(args)) {
            Err(e) => Err(("wstrace load", e.exit_code(), e.to_string())),
            Ok(report) => {
                print!("{}", wstrace::tools::load::render(&report));
                // The figures are printed either way; the exit code says
                // whether the run went as asked.
                match report.problems() {
                    problems if problems.is_empty() => Ok(()),
                    problems => Err(("wstrace", 1, problems.join("; "))),
                }
            }
        },
        Command::Logs(args) => {
            wstrace::tools::logs::run(args).map_err(|e| ("wstrace", 1, e.to_string()))
        }
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err((who, code, why)) => {
            eprintln!("{who}: {why}");
            ExitCode::from(code)
        }
    }
}

/// Exit 0 on a 200; 64 for bad usage (a URL or CA file that cannot
/// work), 1 for a server that is down or unhealthy.
async fn health(url: &str, ca_cert: Option<&std::path::Path>) -> Result<(), (u8, String)> {
    use wstrace::tools::http_client::{self, HttpClientError};
    let usage = wstrace::tools::client::EXIT_USAGE;
    let trust = wstrace::tools::tls::Trust::new(ca_cert).map_err(|e| (usage, e))?;
    match http_client::get(url, std::time::Duration::from_secs(3), &trust).await {
        Ok(response) if response.status == 200 => Ok(()),
        Ok(response) => Err((1, format!("{url} answered {}", response.status))),
        Err(error @ HttpClientError::BadUrl(_)) => Err((usage, error.to_string())),
        Err(error) => Err((1, error.to_string())),
    }
}
