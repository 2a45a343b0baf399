"""Several runs of one network trained as one computation on one device (horizontal fusion): the
shared stacking machinery (`stacking`), supervised and target-training runs (`supervised`) and
proposed-method runs (`proposed`); engine.loop drives them as a strategy."""
