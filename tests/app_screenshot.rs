//! The real window under Xvfb: start the app on a tiny random model with one generation at
//! start, wait for its result to reach the history folder, take a screenshot of the screen
//! with ImageMagick's `import`, and check the window's size and that it is not blank.
//!
//! Needs `Xvfb` and `import` (Debian: xvfb, imagemagick) and a Vulkan or GL driver (Mesa).
//! Without them the test says so and passes, unless `STARFLOW_SCREENSHOT_REQUIRED=1`
//! (`tests/app_screenshot.sh` sets it). `STARFLOW_SCREENSHOT_OUT` keeps the screenshot.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use starflow_studio::app::INITIAL_WINDOW_SIZE;
use starflow_studio::app::fixture::{tiny_config, write_model_folder};

const SCREEN: (u32, u32) = (1280, 800);
/// Loading, the first wgpu frame on lavapipe and one tiny CPU generation.
const GENERATION_TIMEOUT: Duration = Duration::from_secs(180);
/// Time for the frame with the result to be presented after it was saved.
const SETTLE: Duration = Duration::from_millis(2000);
/// A window edge may be off by this much (rounding of the inner size).
const SIZE_TOLERANCE_PX: u32 = 2;
/// An egui window with panels, text and an image has far more colors than this.
const MIN_DISTINCT_COLORS: usize = 24;

fn on_path(program: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program}"))
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Kills the child when dropped, so a failing assert leaves no X server behind.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_xvfb() -> (Killed, String) {
    let geometry = format!("{}x{}x24", SCREEN.0, SCREEN.1);
    let mut child = Command::new("Xvfb")
        .args(["-displayfd", "1", "-screen", "0", &geometry, "-br", "-nolisten", "tcp"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("Xvfb starts");
    let stdout = child.stdout.take().expect("piped");
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).expect("Xvfb prints its display number");
    let display = format!(":{}", line.trim());
    (Killed(child), display)
}

fn has_png(folder: &Path) -> bool {
    std::fs::read_dir(folder).is_ok_and(|mut entries| {
        entries.any(|e| e.is_ok_and(|e| e.path().extension().is_some_and(|x| x == "png")))
    })
}

#[test]
fn the_real_window_shows_a_generated_image_under_xvfb() {
    let required = std::env::var("STARFLOW_SCREENSHOT_REQUIRED").is_ok_and(|v| v == "1");
    let missing: Vec<&str> = ["Xvfb", "import"].into_iter().filter(|p| !on_path(p)).collect();
    if !missing.is_empty() {
        let text = format!(
            "the headless screenshot check did not run: {} not found (apt-get install xvfb imagemagick)",
            missing.join(" and ")
        );
        assert!(!required, "{text}");
        eprintln!("{text}");
        return;
    }

    let root = tempfile::tempdir().expect("temp dir");
    let model = root.path().join("model");
    write_model_folder(&model, &tiny_config(16), 5).expect("model folder");
    let history = root.path().join("history");
    let home = root.path().join("home");
    std::fs::create_dir_all(&home).expect("home");

    let (_xvfb, display) = start_xvfb();
    let log_path = root.path().join("app.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let app = Command::new(env!("CARGO_BIN_EXE_starflow-studio"))
        .env("DISPLAY", &display)
        .env_remove("WAYLAND_DISPLAY")
        .env("HOME", &home)
        .env("XDG_DATA_HOME", home.join("data"))
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env("STARFLOW_STUDIO_MODEL", &model)
        .env("STARFLOW_STUDIO_BACKEND", "cpu")
        .env("STARFLOW_STUDIO_GENERATE", "1")
        .env("STARFLOW_STUDIO_HISTORY", &history)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("the app starts");
    let mut app = Killed(app);

    let started = Instant::now();
    while !has_png(&history) {
        if let Ok(Some(status)) = app.0.try_wait() {
            panic!(
                "the app exited with {status} before a result: {}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
        assert!(
            started.elapsed() < GENERATION_TIMEOUT,
            "no result after {GENERATION_TIMEOUT:?}: {}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("the result was saved {:.1} s after start", started.elapsed().as_secs_f64());
    std::thread::sleep(SETTLE);

    let shot = root.path().join("screen.png");
    let status = Command::new("import")
        .args(["-display", &display, "-window", "root"])
        .arg(&shot)
        .status()
        .expect("import runs");
    assert!(status.success(), "import failed");
    drop(app);
    if let Ok(out) = std::env::var("STARFLOW_SCREENSHOT_OUT") {
        std::fs::copy(&shot, &out).expect("keeps the screenshot");
        eprintln!("screenshot kept at {out}");
    }

    let image = image::open(&shot).expect("the screenshot decodes").to_rgb8();
    assert_eq!(image.dimensions(), SCREEN);
    // The root window is black (-br); the window is what is not.
    let (mut right, mut bottom) = (0, 0);
    let mut colors = std::collections::HashSet::new();
    for (x, y, pixel) in image.enumerate_pixels() {
        if pixel.0 != [0, 0, 0] {
            right = right.max(x + 1);
            bottom = bottom.max(y + 1);
            colors.insert(pixel.0);
        }
    }
    let expected = (INITIAL_WINDOW_SIZE[0] as u32, INITIAL_WINDOW_SIZE[1] as u32);
    eprintln!(
        "window {right}x{bottom} px (expected {}x{}), {} distinct colors",
        expected.0,
        expected.1,
        colors.len()
    );
    assert!(
        right.abs_diff(expected.0) <= SIZE_TOLERANCE_PX
            && bottom.abs_diff(expected.1) <= SIZE_TOLERANCE_PX,
        "the window is {right}x{bottom}"
    );
    assert!(colors.len() >= MIN_DISTINCT_COLORS, "the window looks blank: {} colors", colors.len());
}
