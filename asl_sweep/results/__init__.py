"""What a user reads after a search: studies read back without torch (`readback`), status and
leaderboard (`leaderboard`), the report (`report`) and its HTML (`document`), deployable
files and their model card (`export`), safe prediction (`predict`).

Top layer under the CLI: may import `search` and everything below it."""
