"""Real-browser tests of the example web pages, and the helper that serves an example."""
