//! `kestrel package`: a board binary and its model, ready to flash.
//!
//! Cross-compiles `boards/<board>` for aarch64 (static musl when that Rust target is
//! installed, glibc otherwise), optionally embeds the model in the binary, stages the
//! model where the board crate's `[package.metadata.deb]` assets expect it, has cargo-deb
//! write the `.deb` (binary, model, config, systemd unit) and writes a tarball with an
//! install script for systems without dpkg.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use serde::Serialize;

pub const BOARDS: [&str; 3] = ["rpi4", "rpi5", "jetson-orin"];

const MUSL: &str = "aarch64-unknown-linux-musl";
const GNU: &str = "aarch64-unknown-linux-gnu";

pub struct PackageOptions {
    pub board: String,
    pub model: PathBuf,
    pub out_dir: PathBuf,
    /// Also embed the model in the binary (one file is then the whole firmware).
    pub embed: bool,
    /// Cargo profile of the board binary (`release`: fat LTO).
    pub profile: String,
    /// The Kestrel source tree (`boards/` lives there).
    pub workspace: PathBuf,
    /// Force a Rust target instead of choosing musl/glibc.
    pub target: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct PackageReport {
    pub board: String,
    pub target: String,
    pub deb: PathBuf,
    pub tarball: PathBuf,
    pub binary_bytes: u64,
    pub model_bytes: u64,
    pub embedded: bool,
}

/// The source tree this `kestrel` was built from.
pub fn default_workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn crate_name(board: &str) -> String {
    format!("kestrel-{board}")
}

fn run(cmd: &mut Command, what: &str) -> anyhow::Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {what} ({:?})", cmd.get_program()))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

fn output(cmd: &mut Command, what: &str) -> anyhow::Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot start {what} ({:?})", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// musl if rustup has it (a static binary runs on any aarch64 Linux), else glibc.
fn choose_target() -> String {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    if installed.lines().any(|l| l.trim() == MUSL) {
        MUSL.into()
    } else {
        GNU.into()
    }
}

fn target_directory(workspace: &Path) -> anyhow::Result<PathBuf> {
    let meta = output(
        Command::new(cargo()).current_dir(workspace).args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
        ]),
        "cargo metadata",
    )?;
    let v: serde_json::Value = serde_json::from_str(&meta).context("cargo metadata output")?;
    v["target_directory"]
        .as_str()
        .map(PathBuf::from)
        .context("cargo metadata gave no target_directory")
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

pub fn package(opts: &PackageOptions) -> anyhow::Result<PackageReport> {
    let board = opts.board.as_str();
    if !BOARDS.contains(&board) {
        bail!(
            "unknown board '{board}' (expected one of {})",
            BOARDS.join(", ")
        );
    }
    let model_bytes = fs::read(&opts.model)
        .with_context(|| format!("cannot read model {}", opts.model.display()))?;
    let model = kestrel_runtime::Model::parse(&model_bytes)
        .map_err(|e| anyhow::anyhow!("{}: {e}", opts.model.display()))?;
    // The board binary refuses such a model at start; refuse it here already.
    let kernels = <crate::compile::Target as clap::ValueEnum>::from_str(board, false)
        .ok()
        .and_then(|t| t.board_kernels());
    if let Some(mismatch) = kernels.and_then(|k| model.kernel_mismatch(k)) {
        bail!(
            "{}: {mismatch} on the {board} board: compile it with --target {board}",
            opts.model.display()
        );
    }
    let manifest = opts.workspace.join("boards").join(board).join("Cargo.toml");
    if !manifest.is_file() {
        bail!(
            "{} not found: `kestrel package` builds the board binary from the Kestrel source tree (pass --workspace)",
            manifest.display()
        );
    }
    Command::new(cargo())
        .args(["deb", "--version"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .context("cargo-deb is not installed: `cargo install cargo-deb` (scripts/setup does)")?;

    let target = opts.target.clone().unwrap_or_else(choose_target);
    let krate = crate_name(board);
    let profile_dir = match opts.profile.as_str() {
        "dev" => "debug",
        p => p,
    };
    let build_dir = target_directory(&opts.workspace)?
        .join(&target)
        .join(profile_dir);
    let staged = build_dir.join("kestrel-package").join(board);
    fs::create_dir_all(&staged)?;
    fs::write(staged.join("model.kes"), &model_bytes)?;
    let model_abs = fs::canonicalize(staged.join("model.kes"))?;

    let mut build = Command::new(cargo());
    build.current_dir(&opts.workspace).args([
        "build",
        "--profile",
        &opts.profile,
        "--target",
        &target,
        "-p",
        &krate,
    ]);
    if opts.embed {
        build.env("KESTREL_EMBED_MODEL", &model_abs);
    } else {
        build.env_remove("KESTREL_EMBED_MODEL");
    }
    run(&mut build, &format!("cargo build of {krate} for {target}"))?;
    let binary = build_dir.join(&krate);
    let binary_bytes = fs::metadata(&binary)
        .with_context(|| format!("{} was not built", binary.display()))?
        .len();

    fs::create_dir_all(&opts.out_dir)?;
    let out_dir = fs::canonicalize(&opts.out_dir)?;
    let mut deb = Command::new(cargo());
    deb.current_dir(&opts.workspace).args([
        "deb",
        "-p",
        &krate,
        "--target",
        &target,
        "--profile",
        &opts.profile,
        "--no-build",
        "--no-strip",
        "-o",
    ]);
    deb.arg(&out_dir);
    if target != MUSL {
        deb.args(["--variant", "glibc"]);
    }
    let printed = output(&mut deb, "cargo deb")?;
    let deb_path = printed
        .lines()
        .map(str::trim)
        .rfind(|l| l.ends_with(".deb"))
        .map(PathBuf::from)
        .context("cargo deb did not say where it wrote the package")?;

    let version = env!("CARGO_PKG_VERSION");
    let tarball = out_dir.join(format!("{krate}-{version}-arm64.tar.gz"));
    write_tarball(
        &tarball,
        board,
        &binary,
        &model_bytes,
        &opts.workspace.join("boards").join(board).join("debian"),
    )?;
    Ok(PackageReport {
        board: board.into(),
        target,
        deb: deb_path,
        tarball,
        binary_bytes,
        model_bytes: model_bytes.len() as u64,
        embedded: opts.embed,
    })
}

/// The same files as the `.deb`, plus `install.sh`, under one top-level folder.
fn write_tarball(
    path: &Path,
    board: &str,
    binary: &Path,
    model: &[u8],
    debian_dir: &Path,
) -> anyhow::Result<()> {
    let krate = crate_name(board);
    let file =
        fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let gz = flate2::write::GzEncoder::new(file, flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    let mut add = |name: &str, bytes: &[u8], mode: u32| -> std::io::Result<()> {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(mode);
        header.set_mtime(0);
        header.set_cksum();
        tar.append_data(&mut header, format!("{krate}/{name}"), bytes)
    };
    add(&format!("bin/{krate}"), &fs::read(binary)?, 0o755)?;
    add("model.kes", model, 0o644)?;
    let unit = format!("{krate}.service");
    add(&unit, &fs::read(debian_dir.join(&unit))?, 0o644)?;
    let config = format!("{board}.toml");
    add(&config, &fs::read(debian_dir.join(&config))?, 0o644)?;
    add("install.sh", install_script(board).as_bytes(), 0o755)?;
    let mut gz = tar.into_inner()?;
    gz.flush()?;
    gz.finish()?;
    Ok(())
}

fn install_script(board: &str) -> String {
    let krate = crate_name(board);
    format!(
        r#"#!/bin/sh
# Installs {krate} where the .deb would put it, for systems without dpkg.
# Run as root from the unpacked folder: sudo ./install.sh
set -eu
cd "$(dirname "$0")"
install -D -m 755 bin/{krate} /usr/bin/{krate}
install -D -m 644 model.kes /usr/share/{krate}/model.kes
# Keep an existing config: it is the user's.
[ -e /etc/kestrel/{board}.toml ] || install -D -m 644 {board}.toml /etc/kestrel/{board}.toml
install -D -m 644 {krate}.service /etc/systemd/system/{krate}.service
if command -v systemctl >/dev/null; then
    systemctl daemon-reload
    systemctl enable --now {krate}.service
fi
echo "{krate} installed; results: journalctl -u {krate} -f"
"#
    )
}

/// Copies the `.deb` to `user@host` and installs it there (ssh and scp must work
/// without a password prompt, and the user must be allowed to sudo).
pub fn install_over_ssh(deb: &Path, destination: &str) -> anyhow::Result<()> {
    let name = deb
        .file_name()
        .context("the package path has no file name")?
        .to_string_lossy()
        .into_owned();
    let remote = format!("/tmp/{name}");
    run(
        Command::new("scp")
            .arg(deb)
            .arg(format!("{destination}:{remote}")),
        "scp",
    )?;
    run(
        Command::new("ssh").arg(destination).arg(format!(
            "sudo apt-get install -y {remote} && rm -f {remote}"
        )),
        "ssh install",
    )
}

/// The text `kestrel package` prints: the `.deb`, what it holds, the tarball.
pub fn print(report: &PackageReport) {
    println!(
        "{} ({}, binary {} bytes{}, model {} bytes)\n{}",
        report.deb.display(),
        report.target,
        report.binary_bytes,
        if report.embedded {
            " with the model"
        } else {
            ""
        },
        report.model_bytes,
        report.tarball.display()
    );
}
