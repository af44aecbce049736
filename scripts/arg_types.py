"""Argument types the measuring scripts share (argparse's `type=`)."""
import argparse


def int_list(text):
    """'1,2' -> [1, 2]: positive integers separated by commas."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected positive integers separated by commas, e.g. 1,2")
    return values


def positive(text):
    """One positive integer."""
    values = int_list(text)
    if len(values) != 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected one positive integer")
    return values[0]
