from distill.cli import run

run()
