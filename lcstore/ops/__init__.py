"""Operations on a store: verify releases, compare two, withdraw or restore an input file,
and publish releases on a schedule."""
