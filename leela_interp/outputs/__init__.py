"""What a run leaves behind: result files and their life cycle, figures, board pictures, the
per-puzzle views and the HTML report."""
