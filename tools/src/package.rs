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
    /// Write a model-only update package instead ([`model_update`]).
    pub model_only: bool,
    /// Version of a model-only update (default: `<crate version>+<UTC YYYYMMDDHHMMSS>`).
    pub model_version: Option<String>,
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

fn check_board(board: &str) -> anyhow::Result<()> {
    if !BOARDS.contains(&board) {
        bail!(
            "unknown board '{board}' (expected one of {})",
            BOARDS.join(", ")
        );
    }
    Ok(())
}

/// Reads the model and checks it runs on `board`'s kernels: the bytes to package.
fn board_model(board: &str, path: &Path) -> anyhow::Result<Vec<u8>> {
    let model_bytes =
        fs::read(path).with_context(|| format!("cannot read model {}", path.display()))?;
    let model = kestrel_runtime::Model::parse(&model_bytes)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    // The board binary refuses such a model at start; refuse it here already.
    let kernels = <crate::compile::Target as clap::ValueEnum>::from_str(board, false)
        .ok()
        .and_then(|t| t.board_kernels());
    if let Some(mismatch) = kernels.and_then(|k| model.kernel_mismatch(k)) {
        bail!(
            "{}: {mismatch} on the {board} board: compile it with --target {board}",
            path.display()
        );
    }
    Ok(model_bytes)
}

/// The full package: board binary, model, config and systemd unit. A model-only update
/// (`opts.model_only`) is [`model_update`]'s.
pub fn package(opts: &PackageOptions) -> anyhow::Result<PackageReport> {
    if opts.model_only {
        bail!("a model-only update is written by package::model_update, not package::package");
    }
    let board = opts.board.as_str();
    check_board(board)?;
    let model_bytes = board_model(board, &opts.model)?;
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

/// What [`model_update`] wrote.
#[derive(Debug, Serialize)]
pub struct ModelUpdateReport {
    pub board: String,
    /// The update's package name, `kestrel-<board>-model`.
    pub package: String,
    pub version: String,
    pub deb: PathBuf,
    pub tarball: PathBuf,
    pub model_bytes: u64,
}

/// Where the full package installs the model, and where the config's `model =` points.
pub fn model_install_path(board: &str) -> String {
    format!("/usr/share/{}/model.kes", crate_name(board))
}

/// A model-only update: `kestrel-<board>-model_<version>_arm64.deb` holding just the
/// model, at the path the full package put it, and a tarball with the model and an
/// install note. Nothing is built.
///
/// The package `Replaces:` the full one, so dpkg hands it the full package's model file
/// (the full package `Replaces:` the update in turn, so installing a newer firmware takes
/// the file back). dpkg writes the new file beside the old one and renames it over, so
/// the service never reads half a model; it notices the replaced file and hot-swaps the
/// model itself, hence no maintainer scripts and no restart in a postinst.
pub fn model_update(opts: &PackageOptions) -> anyhow::Result<ModelUpdateReport> {
    let board = opts.board.as_str();
    check_board(board)?;
    let model_bytes = board_model(board, &opts.model)?;
    let version = match &opts.model_version {
        Some(v) => {
            check_debian_version(v)?;
            v.clone()
        }
        None => default_model_version(std::time::SystemTime::now()),
    };
    let dpkg_deb_missing = || {
        "dpkg-deb is not installed: a model-only update is built with it \
         (it comes with dpkg on Debian and Ubuntu: apt-get install dpkg)"
    };
    Command::new("dpkg-deb")
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .with_context(dpkg_deb_missing)?;

    let krate = crate_name(board);
    let package = format!("{krate}-model");
    fs::create_dir_all(&opts.out_dir)?;
    let out_dir = fs::canonicalize(&opts.out_dir)?;
    let stage = out_dir.join(format!(".{package}-{version}.staging"));
    if stage.exists() {
        fs::remove_dir_all(&stage).with_context(|| format!("cannot clear {}", stage.display()))?;
    }
    let model_path = model_install_path(board);
    let staged_model = stage.join(model_path.trim_start_matches('/'));
    // Modes are set, not left to the umask: dpkg-deb packs what it finds, and a 0700
    // /usr/share on the board would be a bad day.
    let model_dir = staged_model.parent().context("model path has no folder")?;
    make_dirs(&stage, model_dir)?;
    write_mode(&staged_model, &model_bytes, 0o644)?;
    make_dirs(&stage, &stage.join("DEBIAN"))?;
    let control = model_control(board, &version, model_bytes.len() as u64);
    write_mode(
        &stage.join("DEBIAN").join("control"),
        control.as_bytes(),
        0o644,
    )?;

    let deb = out_dir.join(format!("{package}_{version}_arm64.deb"));
    let built = output(
        Command::new("dpkg-deb")
            // xz, not the zstd newer Ubuntu dpkg-deb picks: dpkg before 1.21.18 (Raspberry
            // Pi OS bullseye, JetPack 5) cannot unpack zstd.
            .args(["--root-owner-group", "-Zxz", "--build"])
            .arg(&stage)
            .arg(&deb),
        "dpkg-deb --build",
    );
    let _ = fs::remove_dir_all(&stage);
    built?;

    let tarball = out_dir.join(format!("{package}-{version}.tar.gz"));
    write_model_tarball(&tarball, board, &version, &model_bytes)?;
    Ok(ModelUpdateReport {
        board: board.into(),
        package,
        version,
        deb,
        tarball,
        model_bytes: model_bytes.len() as u64,
    })
}

/// `dir` and its parents up to `root`, each 0755.
fn make_dirs(root: &Path, dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for d in dir.ancestors().take_while(|d| d.starts_with(root)) {
        fs::set_permissions(d, fs::Permissions::from_mode(0o755))
            .with_context(|| format!("cannot set the mode of {}", d.display()))?;
    }
    Ok(())
}

fn write_mode(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set the mode of {}", path.display()))
}

fn model_control(board: &str, version: &str, model_bytes: u64) -> String {
    let krate = crate_name(board);
    let path = model_install_path(board);
    // Installed-Size is in KiB, rounded up; dpkg-deb does not work it out.
    let kib = model_bytes.div_ceil(1024).max(1);
    format!(
        "Package: {krate}-model
Version: {version}
Architecture: arm64
Maintainer: Kestrel developers
Installed-Size: {kib}
Depends: {krate}
Replaces: {krate}
Section: misc
Priority: optional
Description: model update for {krate}
 Replaces the model {krate} classifies with, {path}.
 The running service notices the new file and switches to it without a
 restart.
"
    )
}

/// `<crate version>+<UTC YYYYMMDDHHMMSS>`: a later update sorts higher for apt.
pub fn default_model_version(now: std::time::SystemTime) -> String {
    let secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!("{}+{}", env!("CARGO_PKG_VERSION"), utc_timestamp(secs))
}

/// `YYYYMMDDHHMMSS` in UTC of `secs` since the Unix epoch.
fn utc_timestamp(secs: u64) -> String {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}{m:02}{d:02}{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The proleptic Gregorian date `days` after 1970-01-01.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    // Count from 0000-03-01, so the leap day ends each 400-, 100- and 4-year cycle.
    const DAYS_400Y: u64 = 146_097;
    let z = days + 719_468;
    let era = z / DAYS_400Y;
    let doe = z % DAYS_400Y; // day of the 400-year era
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / (DAYS_400Y - 1)) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of the March-based year
    let mp = (5 * doy + 2) / 153; // month from March = 0
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = era * 400 + yoe + u64::from(month <= 2);
    (year, month, day)
}

/// A Debian version (`[epoch:]upstream[-revision]`) that is also safe in a file name.
fn check_debian_version(v: &str) -> anyhow::Result<()> {
    let upstream = match v.split_once(':') {
        Some((epoch, rest)) if !epoch.is_empty() && epoch.bytes().all(|b| b.is_ascii_digit()) => {
            rest
        }
        Some(_) => bail!("--model-version {v}: the epoch before ':' must be a number"),
        None => v,
    };
    let ok = upstream.starts_with(|c: char| c.is_ascii_digit())
        && upstream
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".+~-".contains(&b))
        && !upstream.ends_with('-');
    if !ok {
        bail!(
            "--model-version {v}: a Debian version starts with a digit and holds only \
             letters, digits and . + ~ - (for example 1.2+20250101)"
        );
    }
    Ok(())
}

fn write_model_tarball(
    path: &Path,
    board: &str,
    version: &str,
    model: &[u8],
) -> anyhow::Result<()> {
    let top = format!("{}-model-{version}", crate_name(board));
    let file =
        fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let gz = flate2::write::GzEncoder::new(file, flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    let mut add = |name: &str, bytes: &[u8]| -> std::io::Result<()> {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_cksum();
        tar.append_data(&mut header, format!("{top}/{name}"), bytes)
    };
    add("model.kes", model)?;
    add("INSTALL", model_install_note(board, version).as_bytes())?;
    let mut gz = tar.into_inner()?;
    gz.flush()?;
    gz.finish()?;
    Ok(())
}

fn model_install_note(board: &str, version: &str) -> String {
    let krate = crate_name(board);
    let path = model_install_path(board);
    format!(
        "Model update {version} for {krate}

On a board with dpkg, install the .deb instead: sudo apt-get install ./{krate}-model_{version}_arm64.deb

Otherwise, as root from this folder, copy the model beside the old one and rename it
over, so the service never reads a half-copied file:

    install -m 644 model.kes {path}.new && mv {path}.new {path}

The running {krate} service notices the new file and switches to it before its next
frame; no restart is needed (systemctl reload {krate} makes it re-read the model even
when the file looks unchanged).
"
    )
}

/// The text `kestrel package --model-only` prints.
pub fn print_model_update(report: &ModelUpdateReport) {
    println!(
        "{} ({} {}, model {} bytes)\n{}",
        report.deb.display(),
        report.package,
        report.version,
        report.model_bytes,
        report.tarball.display()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_timestamps_of_known_instants() {
        assert_eq!(utc_timestamp(0), "19700101000000");
        // 2000-02-29 23:59:59, a leap day of a 400-year leap year.
        assert_eq!(utc_timestamp(951_868_799), "20000229235959");
        // 2024-12-31 12:34:56 and the second after 2100-02-28 23:59:59 (not a leap year).
        assert_eq!(utc_timestamp(1_735_648_496), "20241231123456");
        assert_eq!(utc_timestamp(4_107_542_400), "21000301000000");
    }

    #[test]
    fn model_versions() {
        for ok in ["1", "0.1.0+20250101120000", "2:1.0~rc1", "1.0-2"] {
            check_debian_version(ok).unwrap();
        }
        for bad in ["", "v1", "1/2", "1 2", "a:1", "1.0-", "../1"] {
            assert!(check_debian_version(bad).is_err(), "{bad}");
        }
        let v = default_model_version(std::time::UNIX_EPOCH);
        assert_eq!(v, format!("{}+19700101000000", env!("CARGO_PKG_VERSION")));
        check_debian_version(&v).unwrap();
    }
}
