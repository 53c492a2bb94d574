#!/usr/bin/env bash
# Headless screenshot of the real window after one generation (issue #5): runs
# tests/app_screenshot.rs and fails, instead of skipping, when Xvfb or ImageMagick is missing.
# Needs (Debian): xvfb imagemagick mesa-vulkan-drivers libvulkan1.
# Usage: tests/app_screenshot.sh [where to keep the screenshot, default target/app-screenshot.png]
set -euo pipefail
cd "$(dirname "$0")/.."
export STARFLOW_SCREENSHOT_REQUIRED=1
export STARFLOW_SCREENSHOT_OUT="${1:-$PWD/target/app-screenshot.png}"
cargo test --test app_screenshot -- --nocapture
