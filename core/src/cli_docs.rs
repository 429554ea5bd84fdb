//! What every binary's command line offers about itself, generated from
//! its clap definition (never written by hand): `completions <SHELL>`
//! (a completion script on stdout) and `man [--dir DIR]` (its manual
//! pages: the main page on stdout, or one page per command into DIR).

use std::io::Write;
use std::path::{Path, PathBuf};

/// Most commands one binary's manual pages cover (a bound on the walk of
/// its subcommands).
pub const MAN_PAGES_MAX: usize = 256;
/// The manual section of every page.
pub const MAN_SECTION: &str = "1";

/// `completions <SHELL>`.
#[derive(clap::Args, Debug, Clone)]
pub struct CompletionsArgs {
    /// The shell: bash, zsh, fish, elvish or powershell.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// `man [--dir DIR]`.
#[derive(clap::Args, Debug, Clone)]
pub struct ManArgs {
    /// Write one page per command into DIR (`<binary>.1`,
    /// `<binary>-<command>.1`, ...) instead of the main page to stdout.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// A failure to write completions or pages.
#[derive(Debug, thiserror::Error)]
pub enum DocsError {
    /// Writing failed.
    #[error("write {what}: {source}")]
    Write {
        /// What was written.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The binary has more commands than [`MAN_PAGES_MAX`].
    #[error("more than {MAN_PAGES_MAX} commands")]
    TooMany,
}

/// Writes `command`'s completion script for `args.shell` to `out`.
pub fn completions(
    mut command: clap::Command,
    args: &CompletionsArgs,
    out: &mut dyn Write,
) -> Result<(), DocsError> {
    let name = command.get_name().to_string();
    clap_complete::generate(args.shell, &mut command, name, out);
    out.flush().map_err(|source| DocsError::Write {
        what: "the completion script".into(),
        source,
    })
}

/// Writes `command`'s manual: its main page to `out`, or with
/// `args.dir` one page per command into that directory. Returns the
/// files written.
pub fn man(
    command: clap::Command,
    args: &ManArgs,
    out: &mut dyn Write,
) -> Result<Vec<PathBuf>, DocsError> {
    let mut command = command;
    command.build();
    match &args.dir {
        None => {
            render(&command, out, "the manual page")?;
            Ok(Vec::new())
        }
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|source| DocsError::Write {
                what: dir.display().to_string(),
                source,
            })?;
            let mut written = Vec::new();
            pages(&command, command.get_name(), dir, &mut written)?;
            Ok(written)
        }
    }
}

/// The two commands every binary has: flattened into its own command
/// enum (`#[command(flatten)] Docs(DocsCommand)`), run with
/// [`DocsCommand::run`].
#[derive(clap::Subcommand, Debug, Clone)]
pub enum DocsCommand {
    /// Print a shell completion script (bash, zsh, fish, elvish,
    /// powershell).
    Completions(CompletionsArgs),
    /// Print the manual page, or write one page per command into --dir.
    Man(ManArgs),
}

impl DocsCommand {
    /// Runs it for the binary whose command line is `command` (its
    /// `CommandFactory::command()`), writing to stdout.
    pub fn run(&self, command: clap::Command) -> Result<(), DocsError> {
        match self {
            DocsCommand::Completions(args) => print_completions(command, args),
            DocsCommand::Man(args) => print_man(command, args),
        }
    }
}

/// `completions <SHELL>` of a binary: the script on stdout.
pub fn print_completions(command: clap::Command, args: &CompletionsArgs) -> Result<(), DocsError> {
    completions(command, args, &mut std::io::stdout())
}

/// `man [--dir DIR]` of a binary: the main page on stdout, or the pages
/// into DIR and each file written named on stdout.
pub fn print_man(command: clap::Command, args: &ManArgs) -> Result<(), DocsError> {
    let mut out = std::io::stdout();
    for path in man(command, args, &mut out)? {
        writeln!(out, "{}", path.display()).map_err(|source| DocsError::Write {
            what: "the list of pages".into(),
            source,
        })?;
    }
    Ok(())
}

/// The page of `command` as `name`, then those of its subcommands.
fn pages(
    command: &clap::Command,
    name: &str,
    dir: &Path,
    written: &mut Vec<PathBuf>,
) -> Result<(), DocsError> {
    if written.len() >= MAN_PAGES_MAX {
        return Err(DocsError::TooMany);
    }
    let named = command.clone().name(name.to_string());
    let path = dir.join(format!("{name}.{MAN_SECTION}"));
    let mut bytes = Vec::new();
    render(&named, &mut bytes, name)?;
    std::fs::write(&path, bytes).map_err(|source| DocsError::Write {
        what: path.display().to_string(),
        source,
    })?;
    written.push(path);
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        if sub.get_name() == "help" {
            continue;
        }
        pages(sub, &format!("{name}-{}", sub.get_name()), dir, written)?;
    }
    Ok(())
}

fn render(command: &clap::Command, out: &mut dyn Write, what: &str) -> Result<(), DocsError> {
    clap_mangen::Man::new(command.clone())
        .section(MAN_SECTION)
        .render(out)
        .map_err(|source| DocsError::Write {
            what: what.to_string(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser, Subcommand};

    /// A small command line like the binaries'.
    #[derive(Parser, Debug)]
    #[command(name = "demo", version, about = "A demo")]
    struct Cli {
        #[command(subcommand)]
        command: Sub,
    }

    #[derive(Subcommand, Debug)]
    enum Sub {
        /// Serve things.
        Serve {
            /// Where.
            #[arg(long)]
            listen: String,
        },
        /// Hidden.
        #[command(hide = true)]
        Secret,
    }

    // Goal: completions name the commands and their flags; the manual has
    // one page per visible command, hidden ones left out. Method: a small
    // clap command line, bash completions, pages into a temporary
    // directory.
    #[test]
    fn completions_and_pages_come_from_the_definition() {
        let mut script = Vec::new();
        completions(
            Cli::command(),
            &CompletionsArgs {
                shell: clap_complete::Shell::Bash,
            },
            &mut script,
        )
        .unwrap();
        let script = String::from_utf8(script).unwrap();
        assert!(
            script.contains("serve") && script.contains("--listen"),
            "{script}"
        );

        let dir = tempfile::tempdir().unwrap();
        let written = man(
            Cli::command(),
            &ManArgs {
                dir: Some(dir.path().to_path_buf()),
            },
            &mut Vec::new(),
        )
        .unwrap();
        let names: Vec<String> = written
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["demo.1", "demo-serve.1"]);
        let page = std::fs::read_to_string(dir.path().join("demo-serve.1")).unwrap();
        assert!(page.starts_with(".ie") || page.contains(".TH"), "{page}");
        assert!(page.contains("listen"), "{page}");
    }
}
