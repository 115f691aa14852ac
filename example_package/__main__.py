"""python -m example_package: see example_package._demo."""

from example_package._demo import main

main()
