"""EntQA (dissertation chapter 6): entity linking as inverted question answering."""
