"""`python -m whatsdex` runs the same program as the `whatsdex` executable."""

from whatsdex.entry import main

if __name__ == "__main__":
    main()
