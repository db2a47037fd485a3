"""Reading finished runs without Ray: the run report (Markdown, HTML, figures) and paired comparisons."""
