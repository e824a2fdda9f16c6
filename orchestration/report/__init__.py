"""What a study reports: a registry of analyses (tables, plots, significance, name leak, error browser,
pilot pairs, findings) that read the finished trials and write the summary folder."""
