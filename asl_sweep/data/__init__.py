"""Images to tensors: the folder scan, decoding and cache (`images`, `imageset`), the built-in
signers (`synthetic`), person-disjoint splits and folds (`splits`), the tensors of one study
per size and fold (`studydata`), batched augmentation on the device (`augment`) and the
batches a trainer draws (`batches`).

May import `settings` and `runtime`."""
