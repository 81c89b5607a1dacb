"""What reads the compiler's graphs for people: diagrams, explanations, values."""
