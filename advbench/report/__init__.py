"""Tables from the store (leaderboard, the paper's tables) and their output formats."""
