//! The HTML report of `triage batch`, loaded in headless Chromium: a screenshot must come out
//! and must show something (not a blank page).
//!
//! Skips, saying why, when Chromium (Debian's `chromium`) or the model is not installed.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use flate2::read::ZlibDecoder;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn chromium() -> Option<PathBuf> {
    let candidates = ["chromium", "chromium-browser", "google-chrome"];
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path) {
        for name in candidates {
            let p = dir.join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

/// Runs Chromium headless on `url`, writing a 1200x900 screenshot to `png`. Gives up after
/// two minutes.
fn screenshot(chromium: &Path, url: &str, png: &Path, profile: &Path) -> std::process::ExitStatus {
    let mut child = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--screenshot={}", png.display()))
        .arg("--window-size=1200,900")
        .arg(url)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromium");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(status) = child.try_wait().expect("wait for chromium") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("chromium did not finish within two minutes");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A decoded 8-bit PNG: width, height, channels and the unfiltered pixel bytes.
struct Image {
    width: usize,
    height: usize,
    channels: usize,
    pixels: Vec<u8>,
}

/// Decodes the 8-bit, non-interlaced RGB / RGBA PNGs that Chromium writes.
fn decode_png(bytes: &[u8]) -> Image {
    use std::io::Read;
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    let mut pos = 8;
    let (mut width, mut height, mut channels) = (0, 0, 0);
    let mut idat = Vec::new();
    while pos + 8 <= bytes.len() {
        let len = u32::from_be_bytes(bytes[pos..pos + 4].try_into().unwrap()) as usize;
        let kind = &bytes[pos + 4..pos + 8];
        let data = &bytes[pos + 8..pos + 8 + len];
        match kind {
            b"IHDR" => {
                width = u32::from_be_bytes(data[0..4].try_into().unwrap()) as usize;
                height = u32::from_be_bytes(data[4..8].try_into().unwrap()) as usize;
                assert_eq!(data[8], 8, "bit depth");
                channels = match data[9] {
                    2 => 3,
                    6 => 4,
                    t => panic!("colour type {t}"),
                };
                assert_eq!(data[12], 0, "interlaced");
            }
            b"IDAT" => idat.extend_from_slice(data),
            b"IEND" => break,
            _ => {}
        }
        pos += 12 + len;
    }
    let mut raw = Vec::new();
    ZlibDecoder::new(&idat[..]).read_to_end(&mut raw).unwrap();
    let stride = width * channels;
    assert_eq!(raw.len(), height * (stride + 1), "image data size");
    let mut pixels = vec![0u8; height * stride];
    for y in 0..height {
        let filter = raw[y * (stride + 1)];
        let line = &raw[y * (stride + 1) + 1..(y + 1) * (stride + 1)];
        for x in 0..stride {
            let a = if x >= channels {
                pixels[y * stride + x - channels]
            } else {
                0
            } as i16;
            let b = if y > 0 {
                pixels[(y - 1) * stride + x]
            } else {
                0
            } as i16;
            let c = if x >= channels && y > 0 {
                pixels[(y - 1) * stride + x - channels]
            } else {
                0
            } as i16;
            let predictor = match filter {
                0 => 0,
                1 => a,
                2 => b,
                3 => (a + b) / 2,
                4 => {
                    let p = a + b - c;
                    let (pa, pb, pc) = ((p - a).abs(), (p - b).abs(), (p - c).abs());
                    if pa <= pb && pa <= pc {
                        a
                    } else if pb <= pc {
                        b
                    } else {
                        c
                    }
                }
                f => panic!("filter {f}"),
            };
            pixels[y * stride + x] = (line[x] as i16 + predictor) as u8;
        }
    }
    Image {
        width,
        height,
        channels,
        pixels,
    }
}

#[test]
fn report_renders_in_headless_chromium() {
    let model = root().join("models/triage-v1");
    assert!(
        model.join("model.safetensors").is_file(),
        "no model at {}",
        model.display()
    );
    let Some(chromium) = chromium() else {
        eprintln!("skipped: chromium is not installed (apt-get install -y chromium)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.html");
    let fixtures = root().join("tests/fixtures/batch");
    let status = Command::new(env!("CARGO_BIN_EXE_triage"))
        .args(["batch", "-q", "--model-dir"])
        .arg(&model)
        .arg(fixtures.join("chat.jsonl"))
        .arg(fixtures.join("prompts.csv"))
        .arg(fixtures.join("batch_api.jsonl"))
        .arg("--report")
        .arg(&report)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(1), "the fixtures have bad rows");

    let png = dir.path().join("out.png");
    let url = format!("file://{}", report.display());
    let status = screenshot(&chromium, &url, &png, &dir.path().join("profile"));
    assert!(status.success(), "chromium failed: {status}");
    let bytes = std::fs::read(&png).expect("chromium wrote no screenshot");
    if let Ok(keep) = std::env::var("TRIAGE_KEEP_SCREENSHOT") {
        std::fs::write(keep, &bytes).unwrap();
    }
    let image = decode_png(&bytes);
    assert_eq!((image.width, image.height), (1200, 900));

    // Not blank: many distinct colours (text, bars of each tier and mode), and a good share
    // of the page differs from its background.
    let mut colours = std::collections::HashSet::new();
    let background = &image.pixels[..3];
    let mut differing = 0usize;
    for px in image.pixels.chunks(image.channels) {
        colours.insert([px[0], px[1], px[2]]);
        if &px[..3] != background {
            differing += 1;
        }
    }
    let total = image.width * image.height;
    assert!(colours.len() > 50, "only {} colours", colours.len());
    assert!(
        differing * 20 > total,
        "only {differing} of {total} pixels differ from the background"
    );
}
