"""Saving a layer's `SeedGenerator` state with its weights."""


class SavesSeedState:
    """Mixin for a Keras layer whose `self.seed_generator` state is saved with its weights.

    Keras' default `save_own_variables` keeps a layer's trainable and non-trainable
    variables only; a `SeedGenerator`'s state is neither. Saving it too makes a resumed
    run draw the same random numbers as an uninterrupted one (on JAX, where the state is
    threaded through the train step, and on TensorFlow). A file written without it still
    loads; its draws restart from the seed.
    """

    def save_own_variables(self, store):
        super().save_own_variables(store)
        store["seed_generator_state"] = self.seed_generator.state

    def load_own_variables(self, store):
        if "seed_generator_state" in store:
            self.seed_generator.state.assign(store["seed_generator_state"])
            store = {k: store[k] for k in store.keys() if k != "seed_generator_state"}
        super().load_own_variables(store)
