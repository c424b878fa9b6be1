-- Central-index publisher: per study, the last revision the central index accepted, and the
-- study's surrogate key sent to it (`study_pk`, stable for the life of this database).
-- The publisher locks a study's row while delivering it, so deliveries of one study never
-- overtake each other (live consumer, `dicomflow publish --all`, a second replica).
CREATE TABLE index_publications (
    study_uid           text        PRIMARY KEY,
    study_pk            bigint      GENERATED ALWAYS AS IDENTITY UNIQUE,
    delivered_revision  bigint      NOT NULL DEFAULT 0,
    delivered_at        timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now()
);
