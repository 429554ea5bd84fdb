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

/// `uri` as a QR code of Unicode half blocks (two modules a character),
/// light modules drawn, dark ones left to a dark terminal background, as
/// authenticator apps scan them from a screen; `None` if it does not fit
/// a QR code.
fn qr_text(uri: &str) -> Option<String> {
    use qrcode::render::unicode::Dense1x2;
    let code = qrcode::QrCode::new(uri.as_bytes()).ok()?;
    Some(
        code.render::<Dense1x2>()
            .dark_color(Dense1x2::Light)
            .light_color(Dense1x2::Dark)
            .quiet_zone(true)
            .build(),
    )
}

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
            if format == Format::Table
                && let Some(qr) = qr_text(&enrolled.otpauth_uri)
            {
                crate::outln!("\nScan with your authenticator app:\n{qr}");
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: the QR code printed is the URI's, modules in place, light
    // ones drawn (for a dark terminal), with its quiet zone. Method: read
    // the half blocks back into modules and compare with the encoder's.
    #[test]
    fn the_qr_code_shows_the_uri() {
        let uri = "otpauth://totp/rap:owner?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&issuer=rap";
        let text = qr_text(uri).unwrap();
        let code = qrcode::QrCode::new(uri.as_bytes()).unwrap();
        let width = code.width();
        let colors = code.to_colors();
        const QUIET: usize = 4;
        let side = width + 2 * QUIET;
        // Drawn = light module; each character holds a module row pair.
        let mut drawn = vec![vec![false; side]; side + 1];
        for (row, line) in text.lines().enumerate() {
            assert_eq!(line.chars().count(), side, "row {row}");
            for (x, c) in line.chars().enumerate() {
                let (top, bottom) = match c {
                    ' ' => (false, false),
                    '\u{2580}' => (true, false),
                    '\u{2584}' => (false, true),
                    '\u{2588}' => (true, true),
                    other => panic!("unexpected {other:?}"),
                };
                drawn[2 * row][x] = top;
                drawn[2 * row + 1][x] = bottom;
            }
        }
        for y in 0..side {
            for x in 0..side {
                let inside =
                    (QUIET..QUIET + width).contains(&x) && (QUIET..QUIET + width).contains(&y);
                let light =
                    !inside || colors[(y - QUIET) * width + (x - QUIET)] == qrcode::Color::Light;
                assert_eq!(drawn[y][x], light, "module ({x}, {y})");
            }
        }
    }
}
