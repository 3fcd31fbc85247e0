"""The evaluate stage: metrics, the full report with CIs and calibration, by origin, Grad-CAM, the search report."""
