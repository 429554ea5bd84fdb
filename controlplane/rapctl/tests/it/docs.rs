//! What each binary says about itself: `completions <shell>` and `man`,
//! generated from its clap definition.

use crate::bin_dir;

/// Runs `program` with `args`: (exit code, stdout, stderr).
fn run(program: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `git rev-parse --short=12 HEAD` of the checkout the tests run in.
fn git_revision() -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

// Goal: every binary's --version names the git revision it was built
// from; it prints completion scripts for bash, zsh and fish that know
// its commands, its manual page on stdout, and one page per command into
// a directory; a shell it does not know is refused.
// Method: the four real binaries; the revision compared with the
// checkout's HEAD; one command of each looked for in the scripts and
// among the pages.
#[test]
fn every_binary_has_completions_and_manual_pages() {
    let Some(bin) = bin_dir() else {
        return;
    };
    for (program, command) in [
        ("rapctl", "overview"),
        ("rap-configstore", "serve"),
        ("rap-controlplane", "serve"),
        ("rap-node-agent", "join"),
    ] {
        let path = bin.join(program);
        let (code, version, _) = run(&path, &["--version"]);
        assert_eq!(code, 0, "{program} --version");
        match git_revision() {
            Some(revision) => assert!(
                version.contains(&format!("(git {revision})")),
                "{program} --version: {version} (HEAD is {revision})"
            ),
            None => assert!(version.contains("(git "), "{program} --version: {version}"),
        }
        for shell in ["bash", "zsh", "fish"] {
            let (code, script, err) = run(&path, &["completions", shell]);
            assert_eq!(code, 0, "{program} completions {shell}: {err}");
            assert!(
                script.contains(program) && script.contains(command),
                "{program} completions {shell}"
            );
        }
        let (code, _, err) = run(&path, &["completions", "tcsh"]);
        assert_eq!(code, 2, "{program}: an unknown shell is a usage error");
        assert!(err.contains("tcsh"), "{err}");

        let (code, page, err) = run(&path, &["man"]);
        assert_eq!(code, 0, "{program} man: {err}");
        assert!(page.contains(".TH"), "{program}: a roff page");
        assert!(
            page.contains(command),
            "{program}: the page lists {command}"
        );

        let dir = tempfile::tempdir().unwrap();
        let (code, listed, err) = run(&path, &["man", "--dir", dir.path().to_str().unwrap()]);
        assert_eq!(code, 0, "{program} man --dir: {err}");
        for page in [format!("{program}.1"), format!("{program}-{command}.1")] {
            assert!(
                dir.path().join(&page).is_file(),
                "{program}: {page} in {listed}"
            );
            assert!(listed.contains(&page), "{program}: {page} listed");
        }
    }
}
