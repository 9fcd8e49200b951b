"""The pvesh-style command line: argument parsing, output and the top-level error catch."""
