"""Models: the front end, the speaker encoders, the training heads, the model file that carries
an encoder between stages, and its export."""
