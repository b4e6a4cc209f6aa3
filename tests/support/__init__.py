"""What the test modules share: the gateway and score-map fixtures (pytest plugins) and the independent reference
implementation of the paper's test protocol."""
