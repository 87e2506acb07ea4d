"""`python -m whatsdex` runs the same CLI as the `whatsdex` executable."""

from whatsdex.cli import main

if __name__ == "__main__":
    main()
