"""Report: the result tables and figures of one experiment, read from the systems table the
workflow writes."""
