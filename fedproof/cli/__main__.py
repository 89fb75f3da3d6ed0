from fedproof.cli.main import app

app()
