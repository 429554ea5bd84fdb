//! `rapctl principal totp enroll|confirm` and `rapctl step-up`: the
//! calling principal's TOTP second factor, and the step-up that high-risk
//! commands need once it is confirmed.

use crate::client::{self, Conn, Session};
use crate::output::Format;
use crate::table::{print_object, time};
use anyhow::{Context as _, Result};
use rap_proto::pb;
use serde_json::json;
use std::io::{BufRead as _, Read as _};

/// Longest line read as a code from standard input.
const CODE_LINE_BYTES_MAX: u64 = 64;

/// TOTP commands.
#[derive(clap::Subcommand, Debug)]
pub enum TotpCommand {
    /// Make a new TOTP secret for your principal and print it (base32
    /// and an otpauth:// URI for an authenticator app) ONCE; it counts
    /// after `confirm`. Once you have a confirmed TOTP, enrolling again
    /// needs a step-up.
    Enroll,
    /// Confirm the enrolment with the code your authenticator shows.
    Confirm {
        /// The 6-digit code.
        code: String,
    },
}

/// `rapctl step-up`.
#[derive(clap::Args, Debug)]
pub struct StepUpArgs {
    #[command(flatten)]
    conn: Conn,
    /// The 6-digit code from your authenticator (asked for on standard
    /// input when left out).
    code: Option<String>,
}

fn status_output(format: Format, status: &pb::TotpStatus) {
    print_object(
        format,
        &[
            ("ENROLLED", status.enrolled.to_string()),
            ("STEPPED UP UNTIL", time(status.stepped_up_until_unix_ms)),
        ],
        &json!({
            "enrolled": status.enrolled,
            "stepped_up_until_unix_ms": status.stepped_up_until_unix_ms,
        }),
    );
}

/// Runs `rapctl principal totp ...` on `s`.
pub async fn run_totp(s: &Session, command: TotpCommand, format: Format) -> Result<()> {
    match command {
        TotpCommand::Enroll => {
            let enrolled = s
                .client
                .clone()
                .enroll_totp(pb::EnrollTotpRequest {})
                .await
                .map_err(|e| s.fail(e))?
                .into_inner();
            eprintln!(
                "The secret is shown ONCE: add it to your authenticator now, then run \
                 `rapctl principal totp confirm <code>`."
            );
            print_object(
                format,
                &[
                    ("SECRET", enrolled.secret_base32.clone()),
                    ("URI", enrolled.otpauth_uri.clone()),
                    ("DIGITS", enrolled.digits.to_string()),
                    ("PERIOD", format!("{}s", enrolled.period_seconds)),
                ],
                &json!({
                    "secret_base32": enrolled.secret_base32,
                    "otpauth_uri": enrolled.otpauth_uri,
                    "digits": enrolled.digits,
                    "period_seconds": enrolled.period_seconds,
                }),
            );
        }
        TotpCommand::Confirm { code } => {
            let status = s
                .client
                .clone()
                .confirm_totp(pb::TotpCodeRequest { code })
                .await
                .map_err(|e| s.fail(e))?
                .into_inner();
            status_output(format, &status);
        }
    }
    Ok(())
}

/// Asks for a code on standard input (the prompt on standard error).
fn read_code() -> Result<String> {
    eprint!("TOTP code: ");
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .take(CODE_LINE_BYTES_MAX)
        .read_line(&mut line)
        .context("reading the code from standard input")?;
    Ok(line.trim().to_string())
}

/// Steps the token of `conn` up with `code`.
async fn step_up(conn: &Conn, code: String) -> Result<pb::TotpStatus> {
    let s = client::connect(conn, "step-up").await?;
    Ok(s.client
        .clone()
        .step_up(pb::TotpCodeRequest { code })
        .await
        .map_err(|e| s.fail(e))?
        .into_inner())
}

/// Runs `rapctl step-up`.
pub async fn run_step_up(args: StepUpArgs, format: Format) -> Result<()> {
    let code = match args.code {
        Some(code) => code,
        None => read_code()?,
    };
    let status = step_up(&args.conn, code).await?;
    status_output(format, &status);
    Ok(())
}

/// After a command was refused with `STEP_UP_REQUIRED` at a terminal:
/// asks for a code and steps up through the connection it used. The
/// caller runs the command again (the refusal changed nothing).
pub async fn prompt_step_up(conn: Conn) -> Result<()> {
    eprintln!("This needs a fresh second factor (STEP_UP_REQUIRED).");
    let status = step_up(&conn, read_code()?).await?;
    eprintln!(
        "Stepped up until {}; running the command again.",
        time(status.stepped_up_until_unix_ms)
    );
    Ok(())
}
