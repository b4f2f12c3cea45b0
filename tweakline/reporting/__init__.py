"""What people read: terminal output, the HTML report, and CI reports (build status, Markdown)."""
