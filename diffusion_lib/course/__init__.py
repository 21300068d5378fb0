"""What only the book needs: shipped models or trained here, each chapter's recipes, and the notebook rules."""
