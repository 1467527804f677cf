"""`python -m shanshui.cli …` (e.g. under `accelerate launch -m shanshui.cli train unet …`)."""

from shanshui.cli.app import main

main()
